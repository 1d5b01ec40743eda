"""Writes Triton's model configuration protocol (`inference.ModelConfig`, model_config.proto) as a
serialized FileDescriptorSet, taken from the descriptors compiled into the official `tritonclient`
wheel, so that pipe reads `config.pbtxt` files against the official message definitions.

usage: python scripts/triton_descriptors.py OUT   (OUT: proto/model_config.binpb)
"""

import importlib.util
import pathlib
import sys

import tritonclient
from google.protobuf import descriptor_pb2


def main() -> None:
    out = pathlib.Path(sys.argv[1])
    # Loaded by path: importing the package tritonclient.grpc needs grpcio, the descriptors do not.
    path = pathlib.Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    fds = descriptor_pb2.FileDescriptorSet()
    module.DESCRIPTOR.CopyToProto(fds.file.add())
    out.write_bytes(fds.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
