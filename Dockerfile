FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 \
    AGENTSTREAM_HOST=0.0.0.0 AGENTSTREAM_DB=/data/agentstream.db

RUN useradd --create-home --uid 10001 agentstream && mkdir /data && chown agentstream /data
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY protocol ./protocol
RUN pip install --no-cache-dir .

USER agentstream
VOLUME ["/data"]
EXPOSE 8080
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status==200 else 1)"
CMD ["python", "-m", "app"]
