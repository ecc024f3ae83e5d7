"""core schema

Revision ID: c0001
Revises: 
Create Date: 2026-11-26 10:03:39.685184
"""
from alembic import op
import sqlalchemy as sa
import kalpla_core.db


revision = 'c0001'
down_revision = None
branch_labels = ('core',)
depends_on = None


def upgrade() -> None:
    op.create_table('institutions',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_institutions')),
    sa.UniqueConstraint('slug', name=op.f('uq_institutions_slug'))
    )
    op.create_table('signing_keys',
    sa.Column('kid', sa.String(length=64), nullable=False),
    sa.Column('algorithm', sa.String(length=16), nullable=False),
    sa.Column('private_key_encrypted', sa.LargeBinary(), nullable=False),
    sa.Column('public_pem', sa.String(length=2000), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('retired_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.PrimaryKeyConstraint('kid', name=op.f('pk_signing_keys'))
    )
    op.create_table('users',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=True),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('is_platform_admin', sa.Boolean(), nullable=False),
    sa.Column('email_verified_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('token_generation', sa.Integer(), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('institution_plugins',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('plugin', sa.String(length=64), nullable=False),
    sa.Column('settings', sa.JSON(), nullable=False),
    sa.Column('enabled_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_institution_plugins_institution_id_institutions'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_institution_plugins')),
    sa.UniqueConstraint('institution_id', 'plugin', name=op.f('uq_institution_plugins_institution_id'))
    )
    with op.batch_alter_table('institution_plugins', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_institution_plugins_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_institution_plugins_plugin'), ['plugin'], unique=False)

    op.create_table('jobs',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('params', sa.JSON(), nullable=False),
    sa.Column('owner_id', sa.String(length=32), nullable=True),
    sa.Column('institution_id', sa.String(length=32), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('progress', sa.Integer(), nullable=False),
    sa.Column('progress_message', sa.String(length=500), nullable=False),
    sa.Column('result', sa.JSON(), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('started_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.Column('finished_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_jobs_institution_id_institutions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], name=op.f('fk_jobs_owner_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_jobs'))
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_jobs_created_at'), ['created_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_jobs_owner_id'), ['owner_id'], unique=False)

    op.create_table('memberships',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('user_id', sa.String(length=32), nullable=False),
    sa.Column('institution_id', sa.String(length=32), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('created_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated_at', kalpla_core.db.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['institution_id'], ['institutions.id'], name=op.f('fk_memberships_institution_id_institutions'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_memberships_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_memberships')),
    sa.UniqueConstraint('user_id', 'institution_id', 'role', name=op.f('uq_memberships_user_id'))
    )
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_memberships_institution_id'), ['institution_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_memberships_user_id'), ['user_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_memberships_user_id'))
        batch_op.drop_index(batch_op.f('ix_memberships_institution_id'))

    op.drop_table('memberships')
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_jobs_owner_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_institution_id'))
        batch_op.drop_index(batch_op.f('ix_jobs_created_at'))

    op.drop_table('jobs')
    with op.batch_alter_table('institution_plugins', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_institution_plugins_plugin'))
        batch_op.drop_index(batch_op.f('ix_institution_plugins_institution_id'))

    op.drop_table('institution_plugins')
    op.drop_table('users')
    op.drop_table('signing_keys')
    op.drop_table('institutions')
