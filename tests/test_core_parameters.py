"""What a job's parameters and mounts become: Core's own parameters never refuse a job, files are mapped to
the cluster by the admin's table, and nothing outside a mapped folder can be named."""

from __future__ import annotations

from pathlib import Path

import pytest

from provider.config import ConfigError, settings_from_dict
from provider.paths import UnmappedPath, map_ucloud_path
from provider.submission import RequestRefused, dynamic_parameters, parameter_environment
from provider.ucloud.devcore import go_value
from provider.ucloud.models import AppParameterValue

TABLE = {"/1234": Path("/gpfs/acme"), "/1234/Home": Path("/home/donna"), "/77": Path("/scratch/p77")}
APP = settings_from_dict(
    {"applications": [{"name": "sim", "script": "/x.sh",
                       "parameters": {"steps": {"type": "integer"}, "input": {"type": "file", "optional": True}}}]}
).applications[0]


def values(**params: dict[str, object]) -> dict[str, AppParameterValue]:
    return {name: AppParameterValue.model_validate(go_value(v)) for name, v in params.items()}


def mounts(*paths: tuple[str, bool]) -> list[AppParameterValue]:
    return [AppParameterValue.model_validate(go_value({"type": "file", "path": p, "readOnly": ro})) for p, ro in paths]


@pytest.mark.parametrize(
    ("ucloud", "cluster"),
    [
        ("/1234/data/a.txt", "/gpfs/acme/data/a.txt"),
        ("/1234/Home/x", "/home/donna/x"),  # the longest prefix wins
        ("/1234/Home", "/home/donna"),
        ("/1234//Home/./x", "/home/donna/x"),  # empty and '.' components collapse, as UCloud's parser does
        ("/1234/Homework", "/gpfs/acme/Homework"),  # prefixes match whole components only
        ("/77/a b/c", "/scratch/p77/a b/c"),
    ],
)
def test_ucloud_paths_map_by_the_longest_prefix(ucloud: str, cluster: str) -> None:
    assert map_ucloud_path(ucloud, TABLE) == Path(cluster)


@pytest.mark.parametrize(
    ("ucloud", "why"),
    [
        ("/1234/../etc/passwd", "contains '..'"),
        ("/1234/Home/../../etc", "contains '..'"),
        ("/1234/a\x00b", "NUL or newline"),
        ("/1234/a\nb", "NUL or newline"),
        ("relative/x", "not an absolute UCloud path"),
        ("/", "'/' is not a file"),
        ("/12345/x", "is not available on this cluster"),
        ("/123", "is not available on this cluster"),
    ],
)
def test_paths_outside_the_table_or_traversing_are_refused(ucloud: str, why: str) -> None:
    with pytest.raises(UnmappedPath, match=why):
        map_ucloud_path(ucloud, TABLE)


def test_undeclared_and_core_injected_parameters_never_refuse_a_job_and_never_reach_the_script() -> None:
    plan = parameter_environment(
        APP,
        values(steps={"type": "integer", "value": 3}, ucMetricSampleRate={"type": "text", "value": "500ms"},
               exit={"type": "integer", "value": 1}, _injected_slurmAccount={"type": "text", "value": "x"}),
    )
    assert plan.environment["UCLOUD_PARAM_STEPS"] == "3"
    assert plan.environment["UCLOUD_METRIC_SAMPLE_RATE"] == "500ms"
    assert not [k for k in plan.environment if k.startswith("UCLOUD_PARAM_") and k != "UCLOUD_PARAM_STEPS"]
    assert plan.ignored == ("exit", "_injected_slurmAccount")


@pytest.mark.parametrize(
    "rate", [{"type": "text", "value": "$(reboot)"}, {"type": "integer", "value": 5}, {"type": "text", "value": None}]
)
def test_a_malformed_sample_rate_is_left_out_and_the_default_stays(rate: dict[str, object]) -> None:
    plan = parameter_environment(APP, values(steps={"type": "integer", "value": 1}, ucMetricSampleRate=rate))
    assert plan.environment["UCLOUD_METRIC_SAMPLE_RATE"] == "0ms" and plan.ignored == ("ucMetricSampleRate",)


def test_a_declared_core_parameter_reaches_the_script_both_ways() -> None:
    app = settings_from_dict(
        {"applications": [{"name": "sim", "script": "/x.sh",
                           "parameters": {"ucMetricSampleRate": {"type": "text", "optional": True}}}]}
    ).applications[0]
    plan = parameter_environment(app, values(ucMetricSampleRate={"type": "text", "value": "750ms"}))
    assert plan.environment["UCLOUD_METRIC_SAMPLE_RATE"] == plan.environment["UCLOUD_PARAM_UCMETRICSAMPLERATE"] == "750ms"
    assert plan.ignored == ()


def test_without_cores_parameter_the_sample_rate_is_off() -> None:
    plan = parameter_environment(APP, values(steps={"type": "integer", "value": 1}))
    assert plan.environment["UCLOUD_METRIC_SAMPLE_RATE"] == "0ms"


def test_declared_parameters_are_still_checked() -> None:
    with pytest.raises(RequestRefused, match="The parameter 'steps' is required"):
        parameter_environment(APP, values(ucMetricSampleRate={"type": "text", "value": "0ms"}))
    with pytest.raises(RequestRefused, match="must be of type integer, not text"):
        parameter_environment(APP, values(steps={"type": "text", "value": "3"}))


def test_file_parameters_and_mounts_become_cluster_paths() -> None:
    plan = parameter_environment(
        APP,
        values(steps={"type": "integer", "value": 1}, input={"type": "file", "path": "/1234/Home/in.txt"}),
        [*mounts(("/1234/data", False), ("/77/ref", True)), AppParameterValue.model_validate(go_value({"type": "ingress", "id": "9"}))],
        TABLE,
    )
    env = plan.environment
    assert env["UCLOUD_PARAM_INPUT"] == "/home/donna/in.txt"
    assert env["UCLOUD_MOUNTS"] == "/gpfs/acme/data\n/scratch/p77/ref"
    assert env["UCLOUD_READONLY_MOUNTS"] == "/scratch/p77/ref"
    assert plan.ignored == ("resource:ingress",)


@pytest.mark.parametrize(
    ("params", "resources", "why"),
    [
        ({"input": {"type": "file", "path": "/999/in.txt"}}, [],
         "The file /999/in.txt is not available on this cluster.*\\(the parameter 'input'\\)"),
        ({}, [("/1234/../../etc", False)], "contains '..' \\(a mounted folder\\)"),
        ({}, [("/1234/a\x00", False)], "NUL or newline character \\(a mounted folder\\)"),
        ({"input": {"type": "file", "path": ""}}, [], "The parameter 'input' has no file path"),
    ],
)
def test_unmapped_or_forged_files_refuse_the_job_with_a_reason(params: dict, resources: list, why: str) -> None:  # type: ignore[type-arg]
    with pytest.raises(RequestRefused, match=why):
        parameter_environment(APP, values(steps={"type": "integer", "value": 1}, **params), mounts(*resources), TABLE)


def test_no_table_means_no_files() -> None:
    with pytest.raises(RequestRefused, match="is not available on this cluster"):
        parameter_environment(APP, values(steps={"type": "integer", "value": 1}), mounts(("/1234/x", False)))


@pytest.mark.parametrize(
    ("paths", "why"),
    [
        ({"1234": "/x"}, "a UCloud path prefix must look like '/1234'"),
        ({"/1234/..": "/x"}, "contains '..'"),
        ({"/1234": "relative"}, "the cluster path must be absolute"),
        ({"/1234": "/a/../etc"}, "the cluster path must be absolute, without '..'"),
        ({"/1234": "/a", "/1234/": "/b"}, "the same UCloud prefix appears twice"),
    ],
)
def test_the_files_table_is_validated(paths: dict[str, str], why: str) -> None:
    with pytest.raises(ConfigError, match=r"\[files\] paths"):
        settings_from_dict({"files": {"paths": paths}})
    with pytest.raises(ConfigError, match=why):
        settings_from_dict({"files": {"paths": paths}})


def test_the_files_table_is_kept_in_one_spelling() -> None:
    files = settings_from_dict({"files": {"paths": {"/1234/Home/": "/home/donna/"}}}).files
    assert files.paths == {"/1234/Home": Path("/home/donna")}


def test_dynamic_parameters_are_what_the_admin_declared_and_ucloud_lacks() -> None:
    offered = dynamic_parameters([APP], "sim", "3.1", {"steps"})
    assert [(p["name"], p["type"], p["optional"]) for p in offered] == [("input", "input_file", True)]
    assert dynamic_parameters([APP], "sim", "3.1", {"steps", "input"}) == []
    assert dynamic_parameters([APP], "other", "1", set()) == []
    with_core_own = settings_from_dict(
        {"applications": [{"name": "sim", "script": "/x.sh",
                           "parameters": {"ucMetricSampleRate": {"type": "text", "optional": True}}}]}
    ).applications
    assert dynamic_parameters(with_core_own, "sim", "1", set()) == []  # Core adds it to every job itself


def test_check_config_names_a_mapped_folder_that_is_not_there(tmp_path: Path) -> None:
    from provider.cli import check_files

    settings = settings_from_dict({"files": {"paths": {"/1234": str(tmp_path), "/55": str(tmp_path / "typo")}}})
    problems = [p for p in check_files(settings) if p.startswith("[files.paths]")]
    assert problems == [f'[files.paths] "/55": {tmp_path / "typo"} is not a directory on this host']
