"""Settings: every key has a default, and every mistake names the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from provider.cli import main
from provider.config import ConfigError, LiveSettings, Settings, load_settings

EXAMPLE = Path(__file__).parent.parent / "config.example.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "provider.toml"
    path.write_text(text)
    return path


def test_the_example_file_is_valid_and_documents_every_key() -> None:
    settings = load_settings(EXAMPLE)
    text = EXAMPLE.read_text()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        if getattr(model, "__origin__", None) is list:  # an array of tables: [[products]]
            (model,) = model.__args__  # type: ignore[union-attr]
            assert f"[[{section}]]" in text, section
        else:
            assert f"[{section}]" in text, section
        for key in model.model_fields:  # type: ignore[union-attr]
            documented = f"\n{key} =" in text or f"[{section}.{key}]" in text
            assert documented, f"[{section}] {key} is not documented"
    assert settings.provider.id


def test_no_file_means_embedded_defaults() -> None:
    assert load_settings(None) == Settings()


def test_unknown_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, "[reconcile]\nintervall = 5\n"))
    assert str(err.value) == f"{tmp_path}/provider.toml: [reconcile] intervall: unknown key (check the spelling against config.example.toml)"


def test_bad_value_names_file_key_and_reason(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(write(tmp_path, '[server]\nport = 70000\n[slurm]\nbackend = "rest"\n'))
    message = str(err.value)
    assert "provider.toml: [server] port: Input should be less than or equal to 65535" in message
    assert "[slurm] backend: Input should be 'auto', 'pyslurm' or 'cli'" in message


def test_state_override_must_name_a_ucloud_state(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[slurm\] states: FAILED = 'DONE': must be one of"):
        load_settings(write(tmp_path, '[slurm.states]\nFAILED = "DONE"\n'))


def test_broken_toml_is_reported_with_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"provider\.toml: not valid TOML"):
        load_settings(write(tmp_path, "[server\n"))


def test_check_config_reports_missing_key_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        f'[ucloud]\npublic_key_file = "{tmp_path}/nope.pub"\nrefresh_token_file = "{tmp_path}/nope"\n',
    )
    assert main(["check-config", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"[ucloud] public_key_file: {tmp_path}/nope.pub: cannot be read" in err
    assert f"[ucloud] refresh_token_file: {tmp_path}/nope: cannot be read" in err


def test_check_config_passes_with_real_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from provider.ucloud.devcore import DevCoreKeys

    keys = DevCoreKeys.load_or_create(tmp_path / "keys")
    path = write(
        tmp_path,
        f'[ucloud]\npublic_key_file = "{keys.public_key_file}"\nrefresh_token_file = "{keys.refresh_token_file}"\n'
        f'[store]\npath = "{tmp_path}/state/p.sqlite3"\n',
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert "OK" in capsys.readouterr().out


def test_a_reload_changes_what_every_reader_sees_and_names_what_needs_a_restart(tmp_path: Path) -> None:
    first = load_settings(write(tmp_path, '[[products]]\nid = "cpu-1"\ncategory = "cpu"\n'))
    live = LiveSettings(first)
    held = live  # what the job service, the routes and the usage meter hold
    second = load_settings(
        write(tmp_path, '[server]\nport = 9999\n[[products]]\nid = "cpu-2"\ncategory = "cpu"\n')
    )
    restart = live.reload(second)
    assert [p.id for p in held.current.products] == ["cpu-2"]
    assert restart == ["server"]
    assert held.current.server.port == first.server.port  # a restart section keeps its running value
