# One image for every process of the service (web, relay, bridge, worker, webhook-worker,
# reconciler and the one-off migrate and topics jobs); docker-compose.yml and deploy/k8s/ choose the command. Wheels are built in one
# stage; the other runs them from a slim image as a non-root user (uid 10001).
FROM python:3.11-slim AS build
WORKDIR /build
COPY requirements.txt .
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=orders_project.settings
RUN groupadd --gid 10001 app && useradd --create-home --uid 10001 --gid 10001 app
WORKDIR /app
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/* && rm -rf /wheels
# The project (.dockerignore leaves out the virtualenv, local data and deploy/).
COPY --chown=app:app . .
# Static files for WhiteNoise, collected at build time with development's settings (no secret
# exists at build time, and collectstatic needs none). The containers run as production (ENVIRONMENT
# unset is production) and get their key, hosts and SMTP server from their environment.
RUN ENVIRONMENT=development python manage.py collectstatic --noinput -v 0 \
    && mkdir -p /app/var && chown app:app /app/var
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# web (gunicorn), then the Prometheus endpoints of relay, bridge, worker, reconciler and webhook-worker. No HEALTHCHECK here:
# docker-compose.yml and the Kubernetes probes check each process in its own way.
EXPOSE 8080 9101 9102 9103 9104 9105
CMD ["gunicorn", "-c", "gunicorn.conf.py", "orders_project.wsgi"]
