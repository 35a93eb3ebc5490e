FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DJANGO_SETTINGS_MODULE=niyra.settings.production

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# collectstatic must run with production settings (DEBUG off: the hashed, compressed manifest
# storage), which refuse to load without their secrets: throwaway values for this step only
# (nothing connects to the database or Redis here).
RUN DEBUG=False SECRET_KEY=build-only ALLOWED_HOSTS=build \
    NIYRA_ENCRYPTION_KEYS="build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" \
    DATABASE_URL=postgres://build@127.0.0.1:5432/build REDIS_URL=redis://127.0.0.1:6379/0 \
    ANTHROPIC_API_KEY=build-only OPENAI_API_KEY=build-only \
    python manage.py collectstatic --noinput \
 && useradd --system --uid 10001 niyra && mkdir -p /app/var && chown -R niyra /app/var

USER niyra
EXPOSE 8000
CMD ["gunicorn", "niyra.asgi:application", "--config", "gunicorn.conf.py"]
