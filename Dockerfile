# The worker image: `docker build -t intent .`, then `docker run intent worker`.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY stream ./stream
COPY schemas ./schemas
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT ["intent"]
CMD ["worker"]
