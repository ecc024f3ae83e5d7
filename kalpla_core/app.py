"""The app factory: configuration, database, plugins, HTTP conventions, in that order."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

import kalpla_core.models  # noqa: F401  (every core table on the metadata)
from kalpla_core.config import ConfigError, Settings, load_settings
from kalpla_core.contract import Event
from kalpla_core.courses.kinds import LessonKindRegistry
from kalpla_core.db import Database, queue_after_commit
from kalpla_core.http.api import Api
from kalpla_core.http.etag import NotModified
from kalpla_core.http.problems import APIError, handle_api_error, handle_unexpected, problem
from kalpla_core.identity.models import User
from kalpla_core.identity.permissions import PermissionRegistry, has_permission
from kalpla_core.identity.tokens import KeyRing
from kalpla_core.plugins.manager import PluginError, PluginManager
from kalpla_core.providers import ProviderRegistry
from kalpla_core.version import __version__

log = logging.getLogger("kalpla")


class Kalpla:
    """Everything one app owns, at ``app.extensions["kalpla"]``."""

    def __init__(self, app: Flask, settings: Settings, plugins: PluginManager) -> None:
        from kalpla_core.http.observability import Metrics

        self.app = app
        self.settings = settings
        self.db = Database(settings.database_url)
        self.plugins = plugins
        self.metrics = Metrics()
        self.permissions = PermissionRegistry()
        self.providers = ProviderRegistry()
        self.keys = KeyRing(settings.secret_key, settings.access_token_ttl)
        self.settings_schemas: dict[str, Any] = {}
        self.lesson_kinds = LessonKindRegistry()
        self.plugin_blueprints: dict[str, str] = {}  # blueprint name -> plugin
        self._redis: Any = None
        self.jobs: Any = None  # set by kalpla_core.jobs.init_jobs

    def redis(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.settings.redis_url)  # type: ignore[arg-type]
        return self._redis

    def authenticators(self) -> list[Any]:
        """Providers of the ``authenticator`` port, in registration order (core first)."""
        return self.providers.all("authenticator", self.app)

    def has_permission(self, session: Session, user: User | None, permission: str,
                       institution_id: str | None) -> bool:
        return has_permission(session, self.permissions, user, permission, institution_id)

    # --- enablement and dispatch ----------------------------------------------------------

    def enabled_plugins(self, session: Session, institution_id: str) -> list[str]:
        from kalpla_core.institutions.service import enabled_plugin_names

        loaded = set(self.plugins.names)
        return [n for n in enabled_plugin_names(session, institution_id) if n in loaded]

    def emit(self, session: Session, hook: str, event: Event,
             only: list[str] | None = None) -> None:
        """Queue ``event`` for delivery through ``hook`` once ``session`` commits: to the
        plugins enabled for its institution (every plugin when it has none), or to ``only``."""
        queue_after_commit(session, lambda: self.deliver(hook, event, only))

    def deliver(self, hook: str, event: Event, only: list[str] | None = None) -> None:
        """Deliver now, inside an app context (handlers may use the toolkit)."""
        with self.app.app_context():
            self._deliver(hook, event, only)

    def _deliver(self, hook: str, event: Event, only: list[str] | None) -> None:
        enabled: list[str] | None = only
        if only is None and event.institution_id is not None:
            with self.db.session() as session:
                enabled = self.enabled_plugins(session, event.institution_id)
        for plugin in self.plugins.notify(hook, event, enabled):
            self.metrics.events_failed.labels(plugin, event.name).inc()


def _flask_config(app: Flask, settings: Settings) -> None:
    app.config.update(
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=settings.max_content_length,
        PROPAGATE_EXCEPTIONS=False,
        API_TITLE="Kalpla API",
        API_VERSION="v1",
        OPENAPI_VERSION="3.1.0",
        OPENAPI_URL_PREFIX="/api",
        OPENAPI_JSON_PATH="openapi.json",
        ETAG_DISABLED=True,
        API_SPEC_OPTIONS={
            "info": {"description": "Kalpla: plugin-based backend for e-learning platforms."},
            "components": {"securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}}},
        },
    )


def _init_unit_of_work(app: Flask, kalpla: Kalpla) -> None:
    @app.after_request
    def _commit(response: Response) -> Response:
        session: Session | None = g.pop("db_session", None)
        if session is None:
            return response
        try:
            if response.status_code < 400:
                session.commit()
            else:
                session.rollback()
        except IntegrityError:
            session.rollback()
            log.warning("integrity error at commit", exc_info=True)
            return problem(409, "The change conflicts with existing data.", "conflict")
        except StaleDataError:
            session.rollback()
            return problem(412, "The resource changed meanwhile; read it again.",
                           "precondition-failed")
        except Exception:
            session.rollback()
            log.exception("commit failed")
            return problem(500, "An internal error occurred; it has been logged.", "internal")
        finally:
            session.close()
        return response

    @app.teardown_request
    def _close(_exc: BaseException | None) -> None:
        session: Session | None = g.pop("db_session", None)
        if session is not None:
            session.rollback()
            session.close()


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Build an app. ``config`` overrides environment settings (``{"database_url": …}``);
    ``plugin_objects`` maps extra plugin names to modules, for tests and embedding."""
    config = dict(config or {})
    extra_plugins = config.pop("plugin_objects", None)
    settings = load_settings(config)

    from kalpla_core.http.observability import configure_logging

    configure_logging(settings.log_level)
    app = Flask("kalpla_core", instance_path=str(settings.instance_path))
    _flask_config(app, settings)
    plugins = PluginManager(settings.plugins, extra=extra_plugins)
    kalpla = Kalpla(app, settings, plugins)
    app.extensions["kalpla"] = kalpla

    from kalpla_core.http.observability import health, init_request_tracking
    from kalpla_core.http.security import init_security

    init_request_tracking(app, kalpla.metrics)
    init_security(app, settings.cors_origins)
    _init_unit_of_work(app, kalpla)
    app.register_error_handler(APIError, handle_api_error)
    app.register_error_handler(NotModified, lambda e: Response(status=304,
                                                               headers={"ETag": e.etag}))
    app.register_error_handler(Exception, handle_unexpected)

    api = Api(app)
    app.extensions["kalpla_api"] = api

    from kalpla_core.http.docs import docs

    app.register_blueprint(health)
    app.register_blueprint(docs)
    _register_core(api, kalpla)
    _register_plugins(app, api, kalpla)
    from kalpla_core.ratelimit import init_ratelimit

    init_ratelimit(app, kalpla)  # after every blueprint, core and plugins, is registered
    return app


def _register_core(api: Api, kalpla: Kalpla) -> None:
    from kalpla_core.identity.routes import blp as identity_blp
    from kalpla_core.identity.routes import wellknown
    from kalpla_core.institutions.routes import blp as institutions_blp
    from kalpla_core.jobs import init_jobs
    from kalpla_core.jobs.routes import blp as jobs_blp
    from kalpla_core.plugins.routes import blp as plugins_blp

    api._app.register_blueprint(wellknown)
    for bp in (identity_blp, institutions_blp, plugins_blp, jobs_blp):
        api.register_blueprint(bp)
    # Identity (issue 3): members, API keys, audit log, privacy.
    from kalpla_core.identity.member_routes import blp as members_blp
    api.register_blueprint(members_blp)
    from kalpla_core.identity.apikey_routes import blp as apikeys_blp
    from kalpla_core.identity.apikey_routes import init_api_key_quotas
    api.register_blueprint(apikeys_blp)
    init_api_key_quotas(api._app)
    from kalpla_core.audit.routes import blp as audit_blp
    api.register_blueprint(audit_blp)
    from kalpla_core.identity.privacy_routes import blp as privacy_blp
    api.register_blueprint(privacy_blp)
    from kalpla_core.identity.federation.oidc_routes import blp as oidc_blp
    api.register_blueprint(oidc_blp)
    # Courses (issue 4): catalog, authoring and lifecycle.
    from kalpla_core.courses.routes import blp as courses_blp
    api.register_blueprint(courses_blp)
    from kalpla_core.courses.structure_routes import blp as structure_blp
    api.register_blueprint(structure_blp)
    from kalpla_core.storage.routes import blp as files_blp
    api.register_blueprint(files_blp)
    # Enrollment (issue 5): enrolling, rosters, waitlist offers, bulk enrollment.
    from kalpla_core.enrollment.routes import blp as enrollment_blp
    api.register_blueprint(enrollment_blp)
    init_jobs(api._app, kalpla)
    # Identity (issue 3): accounts, tokens, sessions, MFA; mail delivery job.
    from kalpla_core.identity.auth_routes import blp as auth_blp
    from kalpla_core.identity.me_routes import blp as me_blp
    from kalpla_core.mail.service import register_mail_jobs
    api.register_blueprint(auth_blp)
    api.register_blueprint(me_blp)
    register_mail_jobs(kalpla)
    # Enrollment (issue 5): learning events and progress; recomputation after lesson changes.
    from kalpla_core.enrollment.progress import register_progress_jobs
    from kalpla_core.enrollment.progress_routes import blp as progress_blp
    api.register_blueprint(progress_blp)
    register_progress_jobs(kalpla)


def _check_selected_provider(kalpla: Kalpla, port: str, settings_value: str,
                             variable: str) -> None:
    known = kalpla.providers.names(port)
    if settings_value not in known:
        raise ConfigError(f"{variable} names {settings_value!r}, which no loaded plugin "
                          f"provides (known: {', '.join(known) or 'none'})")


def _register_plugins(app: Flask, api: Api, kalpla: Kalpla) -> None:
    """Run the registration hooks: core first, then plugins in order."""
    from kalpla_core.plugins.dispatch import init_plugin_routes, register_models

    pm = kalpla.plugins
    try:
        register_models(pm)
        for plugin, permission in pm.collect("kalpla_permissions"):
            kalpla.permissions.register(plugin, permission)
        for plugin, provider in pm.collect("kalpla_providers"):
            kalpla.providers.register(plugin, provider)
        for plugin, schema in pm.call_each("kalpla_settings_schema"):
            if schema is not None:
                kalpla.settings_schemas[plugin] = schema
        for plugin, kind in pm.collect("kalpla_lesson_kinds"):
            kalpla.lesson_kinds.register(plugin, kind)
        for plugin, job_map in pm.call_each("kalpla_jobs"):
            for name, fn in (job_map or {}).items():
                kalpla.jobs.register(plugin, name, fn)
        init_plugin_routes(app, api, kalpla)
    except (ValueError, TypeError) as exc:
        raise PluginError(str(exc)) from exc
    _check_selected_provider(kalpla, "mail", settings_value=kalpla.settings.mail,
                             variable="KALPLA_MAIL")
    pm.call_each("kalpla_startup", app=app)
    log.debug("kalpla %s started with plugins %s", __version__, pm.names)
