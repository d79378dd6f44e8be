"""Rebuild, from UCloud's Go source at a pinned commit, the exact JSON UCloud/Core sends this provider.

Run by a developer (never in CI), with a UCloud checkout or a bare clone:

    python tests/conformance/generate.py --ucloud ~/src/UCloud            # a checkout at the pinned commit
    python tests/conformance/generate.py --git-dir /path/UCloud.git        # a bare clone; --commit to choose

It reads the Go structs and rpc.Call definitions (``provider-integration/shared/pkg``), fills them the
way Core's code fills them (each scenario below names the ``core2`` lines it follows), encodes them with
Go's ``encoding/json`` rules (``goencode.py``), and writes ``tests/data/core-go/``:

- ``calls/<call>.json``: method, path, whether Core names a user, the Go request and response types, and
  the body; ``calls/<call>.unknown-keys.json``: the same body with a key Go does not know added in every
  object (a newer Core adds fields);
- ``calls/<call>.sources.json``: for every key of the body, the Go file:line of the field it comes from;
- ``types.json``: the Go types Core decodes the answers into (and ``JobUpdate``), field by field.

No Go code is copied: only the JSON Go would write, and where each key is declared.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from goencode import GoJson, Raw
from gosource import GoPackages, Source, TypeExpr, call_path, load_packages

PINNED_COMMIT = "63551f4ea7f65fa1ef9946e6773cc60486b1530c"  # SDU-eScience/UCloud, 2026-08-21
OUT = Path(__file__).resolve().parents[1] / "data" / "core-go"
# The stand-in Core (provider/ucloud/devcore.py, ``job_body``) builds its jobs on this one: Go Core's
# create body, so ``dev-core create`` and the tests send what Core sends.
DEVCORE_TEMPLATE = Path(__file__).resolve().parents[2] / "provider" / "ucloud" / "core_go_job.json"
PROVIDER = "slurm"
USER = "donna#1234"
PROJECT = "6b3f7a52-93e1-4c1e-9e1e-5a0c1f0d2b11"
CREATED_AT = 1755770000000
STARTED_AT = 1755770042000
UNKNOWN_KEY = "zzNewerCoreField"


def named(name: str, *args: TypeExpr) -> TypeExpr:
    return TypeExpr("named", name, args)


# -- values, as Core's code fills the Go structs ----------------------------------------------------------


def text(value: str) -> dict[str, Any]:
    """``orcapi.AppParameterValueText`` (applications.go)."""
    return {"Type": "text", "Value": value}


def integer(value: int) -> dict[str, Any]:
    return {"Type": "integer", "Value": value}


def file(path: str, read_only: bool) -> dict[str, Any]:
    """``orcapi.AppParameterValueFile``; Core sets ReadOnly from the user's permissions (job.go ~1650)."""
    return {"Type": "file", "Path": path, "ReadOnly": read_only}


def app_parameter(kind: str, name: str, optional: bool, title: str, **extra: Any) -> dict[str, Any]:
    return {"Type": kind, "Name": name, "Optional": optional, "Title": title, "Description": "", **extra}


APPLICATION: dict[str, Any] = {
    # What AppRetrieve gives jobTransform (core2 job.go ~2448): a NATIVE batch application.
    "Metadata": {
        "Name": "acme-batch",
        "Version": "1.0.0",
        "Authors": ["Acme HPC"],
        "Title": "Acme batch",
        "Description": "Runs the Acme solver",
        "Website": "",
        "Public": True,
        "FlavorName": None,
        "Group": {"Metadata": {"Id": 12}, "Specification": {"Title": "Acme", "Categories": [3]}},
        "CreatedAt": 1754000000000,
    },
    "Invocation": {
        "Tool": {
            "Name": "acme",
            "Version": "1.0.0",
            "Tool": {
                "Owner": "admin@ucloud",
                "CreatedAt": 1754000000000,
                "ModifiedAt": 1754000000000,
                "Description": {
                    "Info": {"Name": "acme", "Version": "1.0.0"},
                    "DefaultNumberOfNodes": 1,
                    "DefaultTimeAllocation": {"Hours": 1},
                    "RequiredModules": [],
                    "Authors": ["Acme HPC"],
                    "Title": "Acme",
                    "Backend": "NATIVE",
                    "SupportedProviders": [PROVIDER],
                },
            },
        },
        "Invocation": [{"Type": "word", "Word": "acme"}, {"Type": "var", "VariableNames": ["value"]}],
        "Parameters": [
            app_parameter("text", "value", False, "Value"),
            app_parameter("integer", "seconds", True, "Seconds", MinValue=0, MaxValue=3600),
            app_parameter("integer", "exit", True, "Exit code"),
            app_parameter("input_file", "input", True, "Input file"),
        ],
        "OutputFileGlobs": ["*"],
        "ApplicationType": "BATCH",
        "AllowAdditionalMounts": True,
        "AllowMultiNode": True,
    },
    "Favorite": False,
    "Versions": ["1.0.0"],
}

PRODUCT_V2: dict[str, Any] = {
    # support.Product (features.go): the product as registered in UCloud.
    "Type": "compute",
    "Category": {
        "Name": "cpu",
        "Provider": PROVIDER,
        "ProductType": "COMPUTE",
        "AccountingUnit": {"Name": "Core", "NamePlural": "Cores", "DisplayFrequencySuffix": True},
        "AccountingFrequency": "PERIODIC_MINUTE",
    },
    "Name": "cpu-1",
    "Description": "One core",
    "ProductType": "COMPUTE",
    "Price": 1,
    "Usage": None,
    "Cpu": 1,
    "MemoryInGigs": 1,
}

JOB_SUPPORT: dict[str, Any] = {
    # What the provider's retrieveProducts advertised, as Core keeps it.
    "Product": {"Id": "cpu-1", "Category": "cpu", "Provider": PROVIDER},
    "Native": {"Enabled": True, "TimeExtension": True},
    "QueueStatus": None,
}


def resolved_support() -> dict[str, Any]:
    """``support.ToApi()``: ResolvedSupport[JobSupport] with the feature list Core derives."""
    return {"Product": PRODUCT_V2, "Support": JOB_SUPPORT, "Features": ["jobs.native.enabled", "jobs.native.extension"]}


def user_parameters(sample_rate: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the user submitted, what Core passes on): Core adds ucMetricSampleRate after validating
    the user's parameters (job.go ~851-866: "0ms" unless the user's job settings turn sampling on)."""
    submitted = {"value": text("Hello, UCloud"), "seconds": integer(1), "input": file("/1234/Home/in.txt", True)}
    return submitted, {**submitted, "ucMetricSampleRate": text(sample_rate)}


MOUNTS = [file("/1234/Home/data", False), file("/1234/Shared results", True)]


def job(state: str, *, sample_rate: str = "250ms", created: bool = True, labels: dict[str, str] | None = None,
        my_permissions: list[str] | None = None) -> dict[str, Any]:
    """A Job as ``jobTransform`` (job.go ~2402) maps it after ``lResourceApplyFlags`` (resources.go ~613)."""
    submitted, parameters = user_parameters(sample_rate)
    exported = {
        # JobCreate (job.go ~838-899): encoded before ucMetricSampleRate is added.
        "SiteVersion": 3,
        "Request": {
            "Application": {"Name": "acme-batch", "Version": "1.0.0"},
            "Product": {"Id": "cpu-1", "Category": "cpu", "Provider": PROVIDER},
            "Name": "",
            "Replicas": 1,
            "Parameters": Raw(None),  # filled in by the caller with the Go encoding
            "Resources": Raw(None),
            "TimeAllocation": {"Hours": 1},
            "ResolvedProduct": Raw(None),
            "ResolvedSupport": Raw(None),
        },
        "ResolvedResources": {"Ingress": None},
        "MachineType": Raw({"cpu": 1, "memoryInGigs": 1}),
    }
    running = state != "IN_QUEUE"
    return {
        "Resource": {
            "Id": "5012345",
            "CreatedAt": CREATED_AT,
            "Owner": {"CreatedBy": USER, "Project": PROJECT},
            "Permissions": {"Myself": my_permissions or [], "Others": []},  # NonNilSlice
            "ProviderGeneratedId": "" if created else "ucloud/4711/1755770000500",
        },
        "Updates": [] if created else [
            {"State": None, "Status": "Your job has been submitted to the queue (Slurm ID: 4711)", "Timestamp": 1755770000600},
            {"State": "RUNNING", "Status": "Your job is now running", "Timestamp": STARTED_AT},
        ],
        "Specification": {
            "Product": {"Id": "cpu-1", "Category": "cpu", "Provider": PROVIDER},
            "Labels": labels if labels is not None else {},
            "Application": {"Name": "acme-batch", "Version": "1.0.0"},
            "Name": "",
            "Hostname": None,
            "Replicas": 1,
            "Parameters": parameters,
            "Resources": MOUNTS,
            "TimeAllocation": {"Hours": 1},
        },
        "Status": {
            "State": state,
            "JobParametersJson": exported,
            "StartedAt": STARTED_AT if running else None,
            "ExpiresAt": STARTED_AT + 3_600_000 if running else None,
            "ResolvedApplication": APPLICATION,
            "ResolvedProduct": PRODUCT_V2,
            "ResolvedSupport": resolved_support(),
        },
        "Output": {"OutputFolder": None},
        "_submitted": submitted,
    }


# -- the calls -------------------------------------------------------------------------------------------

CALLS: dict[str, dict[str, Any]] = {
    "create": {
        "call": "orchestrators.JobsProviderCreate",
        "core": "core2/pkg/orchestrator/job.go:925-945 (jobCreateThroughProvider; the job of ResourceCreateEx, resources.go:1219)",
        "user": True,
        "body": lambda: {"Items": [job("IN_QUEUE")]},
    },
    "create-sampling-off": {
        "call": "orchestrators.JobsProviderCreate",
        "core": "core2/pkg/orchestrator/job.go:855-866 (job settings with sampling off: ucMetricSampleRate=0ms)",
        "user": True,
        "body": lambda: {"Items": [job("IN_QUEUE", sample_rate="0ms")]},
    },
    "terminate": {
        "call": "orchestrators.JobsProviderTerminate",
        "core": "core2/pkg/orchestrator/job.go:1065-1100 (JobsTerminateBulk; ResourceFlags{IncludeProduct})",
        "user": True,
        "body": lambda: {"Items": [job("RUNNING", created=False, my_permissions=["ADMIN"])]},
    },
    "extend": {
        "call": "orchestrators.JobsProviderExtend",
        "core": "core2/pkg/orchestrator/job.go:1014-1062 (JobsExtendBulk)",
        "user": True,
        "body": lambda: {"Items": [{"Job": job("RUNNING", created=False, my_permissions=["ADMIN"]),
                                     "RequestedTime": {"Minutes": 30}}]},
    },
    "retrieveProducts": {
        "call": "orchestrators.JobsProviderRetrieveProducts",
        "core": "core2/pkg/orchestrator/features.go:116,201 (every 10 s, no user)",
        "user": False,
        "body": None,
    },
    "retrieveManifest": {
        "call": "orchestrators.ProviderIntegrationPRetrieveManifest",
        "core": "core2/pkg/orchestrator/features.go:98 (every 10 s, no user)",
        "user": False,
        "body": None,
    },
    "requestDynamicParameters": {
        "call": "orchestrators.JobsProviderRequestDynamicParameters",
        "core": "core2/pkg/orchestrator/job.go:582-594 (the job form) and 1512-1524 (create)",
        "user": True,
        "body": lambda: {"Owner": {"CreatedBy": USER, "Project": PROJECT}, "Application": APPLICATION},
    },
    "onUpdatedLabels": {
        "call": "orchestrators.JobsProviderOnUpdatedLabels",
        "core": "core2/pkg/orchestrator/resources_orchestration.go:100-140 (ResourceFlagsIncludeAll)",
        "user": True,
        "body": lambda: {"Items": [job("RUNNING", created=False, labels={"team": "cfd"}, my_permissions=["ADMIN"])]},
    },
    "attachResource": {
        "call": "orchestrators.JobsProviderAttachResource",
        "core": "core2/pkg/orchestrator/job.go:381-421",
        "user": True,
        "body": lambda: {"Job": job("RUNNING", created=False, my_permissions=["ADMIN"]),
                         "Resource": file("/1234/Home/more", False)},
    },
    "detachResource": {
        "call": "orchestrators.JobsProviderDetachResource",
        "core": "core2/pkg/orchestrator/job.go:423-465",
        "user": True,
        "body": lambda: {"Job": job("RUNNING", created=False, my_permissions=["ADMIN"]),
                         "Resource": file("/1234/Home/data", False)},
    },
    "integrationInit": {
        "call": "orchestrators.ProviderIntegrationPInit",
        "core": "core2/pkg/orchestrator/orchestrator.go:193-200 (after a 449 or 503 on a user's call)",
        "user": True,
        "body": lambda: {"Username": USER},
    },
}

# Types the tests decode with, besides every call's response: what Core decodes our updates into
# (JobsControlAddUpdate's request), the error body UCloud's servers write (util.HttpError), and the part
# of it Core's client reads (rpc/client.go commonErrorMessage: why, and statusCode to trust it).
EXTRA_TYPES = {
    "update request": "orchestrators.JobsControlAddUpdate",
    "error body": "util.HttpError",
    "error read by core": "rpc.commonErrorMessage",
}


def prepare_job(go: GoJson, value: dict[str, Any]) -> dict[str, Any]:
    """Core keeps a copy of the request in jobParametersJson: its RawMessages hold Go encodings."""
    go = GoJson(go.packages)  # these keys are the raw message's content, not fields of the call's type
    value = dict(value)
    submitted = value.pop("_submitted")
    request = value["Status"]["JobParametersJson"]["Request"]
    pv = named("orchestrators.AppParameterValue")
    request["Parameters"] = Raw(go.encode(TypeExpr("map", args=(TypeExpr("basic", "string"), pv)), submitted, "/raw"))
    request["Resources"] = Raw(go.encode(TypeExpr("slice", args=(pv,)), MOUNTS, "/raw"))
    request["ResolvedProduct"] = Raw(go.encode(named("accounting.ProductV2"), PRODUCT_V2, "/raw"))
    support = named("orchestrators.ResolvedSupport", named("orchestrators.JobSupport"))
    request["ResolvedSupport"] = Raw(go.encode(support, resolved_support(), "/raw"))
    return value


def prepare(go: GoJson, body: Any) -> Any:
    if isinstance(body, dict):
        if "_submitted" in body:
            return {k: prepare(go, v) for k, v in prepare_job(go, body).items()}
        return {k: prepare(go, v) for k, v in body.items()}
    if isinstance(body, list):
        return [prepare(go, v) for v in body]
    return body


def generate(packages: GoPackages, commit: str) -> dict[str, Any]:
    """Every file of tests/data/core-go, by name -> content."""
    files: dict[str, Any] = {}
    types: dict[str, Any] = {}
    roots: dict[str, Any] = {}
    go = GoJson(packages)
    for name, spec in CALLS.items():
        call = packages.calls[spec["call"]]
        method, path = call_path(packages, call, PROVIDER)
        go.sources = {}
        body = None if spec["body"] is None else go.encode(call.request, prepare(go, spec["body"]()))
        if spec["body"] is None and str(call.request) != "util.Empty":
            raise SystemExit(f"{name}: a call without a body must take util.Empty, not {call.request}")
        roots[f"{name} response"] = go.describe(call.response, types)
        roots[f"{name} request"] = go.describe(call.request, types)
        files[f"calls/{name}.json"] = {
            "call": spec["call"],
            "defined_at": call.source,
            "core_code": spec["core"],
            "method": method,
            "path": path,
            "user_call": spec["user"],
            "request_type": str(call.request),
            "response_type": str(call.response),
            "body": body,
        }
        if body is not None:  # the same values, and a field Go has never heard of in every struct
            newer = GoJson(packages, unknown_key=UNKNOWN_KEY).encode(call.request, prepare(go, spec["body"]()))
            files[f"calls/{name}.unknown-keys.json"] = newer
        files[f"calls/{name}.sources.json"] = dict(sorted(go.sources.items()))
    for label, qualified in EXTRA_TYPES.items():
        if qualified in packages.calls:
            roots[label] = go.describe(packages.calls[qualified].request, types)
        else:
            roots[label] = go.describe(named(qualified), types)
    files["types.json"] = {"commit": commit, "roots": roots, "structs": dict(sorted(types.items()))}
    files["devcore-template"] = {
        "_comment": f"Generated by tests/conformance/generate.py from UCloud {commit}: Go Core's create body "
        "(one job); provider/ucloud/devcore.py fills in the ids, product, application and parameters.",
        "job": files["calls/create.json"]["body"]["items"][0],
    }
    files["README.md"] = README.format(commit=commit)
    return files


README = """# UCloud/Core's wire format, rebuilt from its Go source

Generated by `tests/conformance/generate.py` from SDU-eScience/UCloud at commit `{commit}`; do not edit by
hand. `calls/<call>.json` is what Core sends for one provider call (method, path, body as Go's
`encoding/json` writes it); `calls/<call>.unknown-keys.json` is the same body with an unknown key in
every object; `calls/<call>.sources.json` names the Go field (file:line) behind every key (`*` = any
list index or map key); `types.json` describes the
Go types Core decodes our answers and updates into. `tests/test_core_conformance.py` replays them.

To follow a newer Core: change `PINNED_COMMIT` in the generator, run it against a checkout at that
commit, read the diff of this folder, and fix the provider where the tests fail.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--ucloud", type=Path, help="a UCloud checkout (at the pinned commit)")
    where.add_argument("--git-dir", type=Path, help="a bare clone of UCloud")
    parser.add_argument("--commit", default=PINNED_COMMIT, help="with --git-dir: the commit to read")
    parser.add_argument("--any-commit", action="store_true", help="with --ucloud: accept a checkout at another commit")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--template", type=Path, default=DEVCORE_TEMPLATE, help="where the stand-in Core's job goes")
    args = parser.parse_args(argv)
    source = Source(checkout=args.ucloud, git_dir=args.git_dir, commit=args.commit)
    commit = source.resolved_commit()
    if args.ucloud and commit != PINNED_COMMIT and not args.any_commit:
        print(f"the checkout is at {commit}, not the pinned {PINNED_COMMIT} (use --any-commit)", file=sys.stderr)
        return 2
    files = generate(load_packages(source), commit)
    for name, content in files.items():
        target = args.template if name == "devcore-template" else args.out / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            target.write_text(content)
        elif name.endswith(".unknown-keys.json"):  # a machine's variant: one line
            target.write_text(json.dumps(content, separators=(",", ":")) + "\n")
        else:
            target.write_text(json.dumps(content, indent=1) + "\n")
    print(f"wrote {len(files)} files to {args.out} from commit {commit}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
