#!/usr/bin/env python3
"""A Veil gRPC client in Python: one streaming request and one batch request.

Stubs are generated at run time from the repository's `proto/veil/v1/inference.proto` with
grpcio-tools into a temporary directory, so nothing needs to be checked in:

    python3 -m pip install grpcio grpcio-tools
    veil serve --listen 127.0.0.1:50051 &
    python3 examples/python_client.py --server 127.0.0.1:50051

The same contract works from any language with gRPC support; see the comments in the .proto
file for every field's meaning and default.
"""

import argparse
import importlib
import os
import sys
import tempfile
from pathlib import Path


def load_stubs(proto_root: Path, out_dir: str):
    """Compiles inference.proto (and attestation.proto, which it imports) into `out_dir` and imports the generated modules."""
    import grpc_tools
    from grpc_tools import protoc

    well_known = os.path.join(os.path.dirname(grpc_tools.__file__), "_proto")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{proto_root}",
            f"-I{well_known}",
            f"--python_out={out_dir}",
            f"--grpc_python_out={out_dir}",
            str(proto_root / "veil" / "v1" / "inference.proto"),
            # inference.proto imports it (GetAttestation).
            str(proto_root / "veil" / "v1" / "attestation.proto"),
        ]
    )
    if rc != 0:
        sys.exit(f"grpc_tools.protoc failed with status {rc}")
    sys.path.insert(0, out_dir)
    pb = importlib.import_module("veil.v1.inference_pb2")
    rpc = importlib.import_module("veil.v1.inference_pb2_grpc")
    return pb, rpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--server", default="127.0.0.1:50051", help="HOST:PORT of a veil server")
    parser.add_argument("--prompt", default="What is the capital of France?")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument(
        "--proto",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "proto",
        help="directory holding veil/v1/inference.proto",
    )
    args = parser.parse_args()

    import grpc

    with tempfile.TemporaryDirectory(prefix="veil-stubs-") as out_dir:
        pb, rpc = load_stubs(args.proto, out_dir)
        with grpc.insecure_channel(args.server) as channel:
            stub = rpc.InferenceStub(channel)

            info = stub.ModelInfo(pb.ModelInfoRequest(), timeout=30)
            print(
                f"model {info.name} ({info.architecture}, {info.dtype} on {info.backend}), "
                f"context {info.context_length} tokens, server {info.server_version}"
            )

            # One streaming request: a chat conversation, greedy decoding.
            request = pb.GenerateRequest(
                chat=pb.ChatInput(messages=[pb.ChatMessage(role="user", content=args.prompt)]),
                params=pb.GenerationParams(temperature=0.0, max_tokens=args.max_tokens),
            )
            print(f"> {args.prompt}")
            for response in stub.Generate(request, timeout=120):
                if response.WhichOneof("event") == "delta":
                    print(response.delta.text, end="", flush=True)
                else:
                    done = response.finished
                    usage = done.usage
                    print(
                        f"\n[finish: {pb.FinishReason.Name(done.reason)}; "
                        f"{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens; "
                        f"first token after {usage.time_to_first_token_seconds * 1e3:.1f} ms]"
                    )

            # One batch request: shared parameters, one item overriding max_tokens.
            prompts = ["The capital of Italy is", "Two plus two equals", "The colour of grass is"]
            items = [pb.GenerateRequest(prompt=p) for p in prompts]
            items[2].params.max_tokens = 4
            batch = pb.GenerateBatchRequest(
                items=items,
                params=pb.GenerationParams(temperature=0.0, max_tokens=8),
            )
            for result in stub.GenerateBatch(batch, timeout=120):
                print(
                    f"[{result.index}] {prompts[result.index]!r} -> {result.text!r} "
                    f"({pb.FinishReason.Name(result.finished.reason)}, "
                    f"{len(result.tokens)} tokens)"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
