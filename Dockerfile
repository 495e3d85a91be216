# The worker image: `docker build -t intent .`, then `docker run intent worker`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY schemas ./schemas
RUN pip install --no-cache-dir . && mkdir -p /var/lib/intent && chown nobody /var/lib/intent
# The worker's local Faust directory must be writable by the user it runs as.
ENV INTENT_DATA_DIR=/var/lib/intent
USER nobody
ENTRYPOINT ["intent"]
CMD ["worker"]
