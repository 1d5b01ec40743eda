# pipe serve in a container: the libtorch-free binary (tract + ort + serve) and libonnxruntime.
#
#   docker build -t pipe-serve .                 # bakes onnx/model.onnx into the image
#   docker build -t pipe-serve --build-arg MODEL=onnx/photos.onnx .   # or any exported model in onnx/
#   docker run -p 8000:8000 pipe-serve           # KServe v2 on :8000, --backend ort
#
# Stage 1 builds pipe without libtorch; stage 2 takes libonnxruntime from the onnxruntime wheel
# (the same version `make setup` installs); stage 3 is a slim Debian with the two files and the model.
# For the pure-Rust tract backend only, drop stage 2 and pass `--backend tract`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --no-default-features --features ort,serve \
 && cp target/release/pipe /usr/local/bin/pipe

FROM python:3.11-slim-bookworm AS onnxruntime
RUN pip install --no-cache-dir onnxruntime==1.31.1 \
 && cp "$(python -c 'import glob, onnxruntime, os; print(sorted(glob.glob(os.path.join(os.path.dirname(onnxruntime.__file__), "capi", "libonnxruntime.so*")))[-1])')" \
       /usr/local/lib/libonnxruntime.so

FROM debian:bookworm-slim
ARG MODEL=onnx/model.onnx
RUN useradd --system --uid 10001 --no-create-home pipe
COPY --from=build /usr/local/bin/pipe /usr/local/bin/pipe
COPY --from=onnxruntime /usr/local/lib/libonnxruntime.so /usr/local/lib/libonnxruntime.so
COPY ${MODEL} /models/model.onnx
ENV ORT_DYLIB_PATH=/usr/local/lib/libonnxruntime.so
# Numeric, so that Kubernetes can check runAsNonRoot.
USER 10001
EXPOSE 8000
# SIGTERM drains (readiness false, 503 to new requests) for --drain-ms, finishes what is in flight, exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["pipe", "serve", "--host", "0.0.0.0", "--port", "8000", "--model", "/models/model.onnx"]
CMD ["--backend", "ort", "--drain-ms", "5000", "--log-json"]
