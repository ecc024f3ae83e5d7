from kalpla_core.cli import main

main()
