#!/usr/bin/python3
"""A migd client in Python, from stubs generated out of proto/ (clients/python/generate.sh).

Connects to the coordinator with mutual TLS, lists the nodes, submits a plan migrating one VM,
follows the run with the Watch stream until it completes, reads the run back, and prints one JSON
object per line on stdout (proto JSON via json_format):

  {"nodes": [...]}                      ListNodes
  {"plan": {...}, "existing": bool}     SubmitPlan
  {"event": {...}}                      each Watch event
  {"run": {...}}                        GetRun once the run finished

Exit status: 0 when the run succeeded, 1 when it failed or was cancelled, 2 for a gRPC error
(its code and details on stderr as JSON).

Usage: migrate_and_watch.py --stubs DIR --coordinator HOST:PORT --cert-dir DIR --vm NAME
       [--to NODE] [--policy POLICY_KIND_ADAPTIVE] [--key KEY] [--identity operator] [--timeout 300]
"""
import argparse
import json
import sys
import uuid


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stubs", required=True, help="folder with the generated migd/v1/*_pb2*.py")
    ap.add_argument("--coordinator", required=True)
    ap.add_argument("--cert-dir", required=True)
    ap.add_argument("--identity", default="operator")
    ap.add_argument("--vm", required=True)
    ap.add_argument("--to", default="")
    ap.add_argument("--policy", default="POLICY_KIND_FIXED", help="a PolicyKind name")
    ap.add_argument("--key", default="")
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the run")
    args = ap.parse_args()

    sys.path.insert(0, args.stubs)
    # Imported once the stubs are on the path.
    import grpc
    from google.protobuf import json_format
    from migd.v1 import common_pb2, coordinator_pb2, coordinator_pb2_grpc

    def emit(key, message, **extra):
        obj = {key: json_format.MessageToDict(message)}
        obj.update(extra)
        print(json.dumps(obj, sort_keys=True), flush=True)

    def read(name):
        with open(f"{args.cert_dir}/{name}", "rb") as f:
            return f.read()

    creds = grpc.ssl_channel_credentials(
        root_certificates=read("ca.crt"),
        private_key=read(f"{args.identity}.key"),
        certificate_chain=read(f"{args.identity}.crt"),
    )
    # A stock client: the coordinator's certificate names the address it listens on, so the
    # channel verifies it as it is (no target name override).
    try:
        with grpc.secure_channel(args.coordinator, creds) as channel:
            stub = coordinator_pb2_grpc.CoordinatorServiceStub(channel)
            nodes = stub.ListNodes(coordinator_pb2.ListNodesRequest(), timeout=10)
            print(json.dumps({"nodes": [json_format.MessageToDict(n) for n in nodes.nodes]}, sort_keys=True), flush=True)

            request = coordinator_pb2.SubmitPlanRequest(
                idempotency_key=args.key or f"python-{uuid.uuid4()}",
                migrate=coordinator_pb2.MigrateVm(vm_name=args.vm, destination_node_id=args.to),
                policy=common_pb2.MigrationPolicy(kind=common_pb2.PolicyKind.Value(args.policy)),
            )
            submitted = stub.SubmitPlan(request, timeout=10)
            emit("plan", submitted.plan, existing=submitted.existing)
            if len(submitted.plan.migrations) != 1:
                print(json.dumps({"error": {"message": f"expected one migration, got {len(submitted.plan.migrations)}"}}), file=sys.stderr)
                return 2
            run_id = submitted.plan.migrations[0].run_id

            final = None
            for response in stub.Watch(coordinator_pb2.WatchRequest(run_id=run_id), timeout=args.timeout):
                emit("event", response.event)
                if response.event.WhichOneof("payload") == "run_completed":
                    final = response.event.run_completed.state
                    break

            run = stub.GetRun(coordinator_pb2.GetRunRequest(run_id=run_id), timeout=10).run
            emit("run", run)
            if final is not None and final != run.state:
                print(json.dumps({"error": {"message": "the completion event and GetRun disagree"}}), file=sys.stderr)
                return 2
            return 0 if run.state == common_pb2.MigrationState.MIGRATION_STATE_SUCCEEDED else 1
    except grpc.RpcError as err:
        print(json.dumps({"error": {"code": err.code().name, "details": err.details()}}), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
