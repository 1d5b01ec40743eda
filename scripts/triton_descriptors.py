"""Writes Triton's protocols, the model configuration (`inference.ModelConfig`, model_config.proto)
and the KServe v2 gRPC service (`inference.GRPCInferenceService`, grpc_service.proto), as one
serialized FileDescriptorSet taken from the descriptors compiled into the official `tritonclient`
wheel, so that pipe reads `config.pbtxt` files and speaks gRPC with the official message definitions.

usage: python scripts/triton_descriptors.py OUT           (OUT: proto/triton.binpb)
       python scripts/triton_descriptors.py --check FILE  (exit 1 unless FILE holds the same descriptors)
"""

import importlib.util
import pathlib
import sys
import types

import tritonclient
from google.protobuf import descriptor_pb2


def load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    check = sys.argv[1] == "--check"
    out = pathlib.Path(sys.argv[-1])
    grpc_dir = pathlib.Path(tritonclient.__file__).parent / "grpc"
    # The package tritonclient.grpc itself needs grpcio; its compiled descriptors do not. Stand in
    # for the package so that service_pb2's `from tritonclient.grpc import model_config_pb2` works.
    package = types.ModuleType("tritonclient.grpc")
    package.__path__ = [str(grpc_dir)]
    sys.modules["tritonclient.grpc"] = package
    config = load("tritonclient.grpc.model_config_pb2", grpc_dir / "model_config_pb2.py")
    package.model_config_pb2 = config
    service = load("tritonclient.grpc.service_pb2", grpc_dir / "service_pb2.py")
    fds = descriptor_pb2.FileDescriptorSet()
    for module in (config, service):
        module.DESCRIPTOR.CopyToProto(fds.file.add())
    if check:
        kept = descriptor_pb2.FileDescriptorSet()
        kept.ParseFromString(out.read_bytes())
        if kept != fds:
            sys.exit(f"{out} differs from the descriptors of the installed tritonclient")
        print(f"{out}: the descriptors of tritonclient's model_config_pb2 and service_pb2")
        return
    out.write_bytes(fds.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
