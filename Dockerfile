FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY requirements.txt ./
RUN pip install -r requirements.txt

COPY . .
# collectstatic needs importable settings, not real secrets: give it throwaway values for this step only.
RUN DEBUG=True NIYRA_READ_DOTENV=0 SECRET_KEY=build-only \
    NIYRA_ENCRYPTION_KEYS="build:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=" \
    python manage.py collectstatic --noinput \
 && useradd --system --uid 10001 niyra && mkdir -p /app/var && chown -R niyra /app/var

USER niyra
EXPOSE 8000
CMD ["gunicorn", "niyra.asgi:application", "--config", "gunicorn.conf.py"]
