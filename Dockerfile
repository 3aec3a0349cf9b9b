# cityflux service image: slim, non-root, with a health check on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY cityflux cityflux
COPY core core
COPY ingest ingest
COPY decoders decoders
COPY device_registry device_registry
COPY storage storage
COPY alerts alerts
COPY parking parking
COPY simulators simulators
COPY bench bench
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[dtls]"  # python-mbedtls: CoAP DTLS-PSK

FROM python:3.11-slim
RUN useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin cityflux
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER cityflux
ENV CITYFLUX_HTTP__HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
EXPOSE 9108 5683/udp 5684/udp
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["cityflux"]
CMD ["serve"]
