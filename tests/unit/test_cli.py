"""The `sdb` CLI without an operator: apply refuses bad specs and stores nothing; get, describe, state."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
import yaml
from support.operator import Operator

from controller.api import types, units
from controller.policy import metering

ROOT = Path(__file__).resolve().parents[2]

BAD = {
    "min-above-max": (
        "capacity: {min: 4, max: 2}",
        "spec.capacity.min: must be <= spec.capacity.max (got 4 > 2)",
    ),
    "capacity-0.3": ("capacity: {min: 0.3}", "spec.capacity.min: must be a multiple of 0.25 compute units"),
    "negative-storage": ("storage: {size: -10Gi}", "spec.storage.size: must be greater than zero"),
    "unknown-state": ("state: Sleeping", "spec.state: must be one of Auto, Active, Paused, Parked"),
    "idleAfter-soon": (
        "autoPause: {idleAfter: soon}",
        "spec.autoPause.idleAfter: must be Auto or a duration",
    ),
}


@pytest.fixture
def cli(state_dir: Path) -> Operator:
    return Operator(state_dir)


def manifest(tmp_path: Path, spec_yaml: str, name: str = "orders") -> Path:
    path = tmp_path / f"{name}.yaml"
    header = "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\n"
    path.write_text(f"{header}metadata: {{name: {name}}}\nspec:\n  {spec_yaml}\n")
    return path


@pytest.mark.parametrize("case", sorted(BAD))
def test_apply_refuses_a_bad_spec_naming_the_field_and_stores_nothing(
    cli: Operator, tmp_path: Path, case: str
) -> None:
    spec_yaml, expected = BAD[case]
    code, out, err = cli.sdb("apply", "-f", str(manifest(tmp_path, spec_yaml)), check=False)
    assert code == 1
    assert expected in err
    assert out == ""
    assert cli.store.keys() == []


def test_apply_reports_every_problem(cli: Operator, tmp_path: Path) -> None:
    path = manifest(tmp_path, "{capacity: {min: 0.3, max: 0}, state: Sleeping}")
    code, _, err = cli.sdb("apply", "-f", str(path), check=False)
    assert code == 1
    assert "spec.capacity.min" in err
    assert "spec.capacity.max" in err
    assert "spec.state" in err


def test_a_bad_spec_does_not_touch_the_stored_one(cli: Operator, tmp_path: Path) -> None:
    cli.sdb("apply", "-f", str(manifest(tmp_path, "capacity: {min: 1, max: 2}")))
    before = (cli.state_dir / "objects/default/orders.yaml").read_text()
    code, _, _ = cli.sdb("apply", "-f", str(manifest(tmp_path, "capacity: {min: 4, max: 2}")), check=False)
    assert code == 1
    assert (cli.state_dir / "objects/default/orders.yaml").read_text() == before


def test_apply_get_and_generation(cli: Operator, tmp_path: Path) -> None:
    _, out, _ = cli.sdb("apply", "-f", str(ROOT / "manifests/samples/full.yaml"))
    assert out.strip() == "serverlessdatabase.dbscale.io/orders created"
    _, out, _ = cli.sdb("apply", "-f", str(ROOT / "manifests/samples/full.yaml"))
    assert out.strip() == "serverlessdatabase.dbscale.io/orders unchanged"
    assert cli.get("orders", "shop").metadata.generation == 1
    changed = yaml.safe_load((ROOT / "manifests/samples/full.yaml").read_text())
    changed["spec"]["capacity"]["max"] = 8
    path = tmp_path / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    _, out, _ = cli.sdb("apply", "-f", str(path))
    assert out.strip() == "serverlessdatabase.dbscale.io/orders configured"
    assert cli.get("orders", "shop").metadata.generation == 2
    _, table, _ = cli.sdb("get", "-n", "shop")
    assert table.split("\n")[1].split()[:5] == ["orders", "Pending", "0", "0.5", "8"]
    _, as_json, _ = cli.sdb("get", "orders", "-n", "shop", "-o", "json")
    obj = json.loads(as_json)
    assert obj["spec"]["capacity"] == {"min": 0.5, "max": 8}
    assert obj["status"]["phase"] == "Pending"
    assert obj["metadata"]["generation"] == 2
    _, as_yaml, _ = cli.sdb("get", "-A", "-o", "yaml")
    assert yaml.safe_load(as_yaml)["items"][0]["metadata"]["name"] == "orders"
    _, described, _ = cli.sdb("describe", "orders", "-n", "shop")
    assert "Generation:   2 (observed 0)" in described
    assert "cron: 0 8 * * 1-5" in described


def test_describe_shows_usage_carried_to_now(cli: Operator, tmp_path: Path) -> None:
    """Status is written on changes, not on a timer: two hours at 1.5 CU since accountedUntil count."""
    cli.sdb("apply", "-f", str(manifest(tmp_path, "{}")))
    status = types.DatabaseStatus(
        phase=types.Phase.ACTIVE,
        capacity=types.CapacityStatus(current=1.5, desired=1.5),
        usage=metering.begin(units.now_utc() - timedelta(hours=2)),  # accounted until two hours ago
    )
    asyncio.run(cli.store.write_status(cli.get("orders"), status))
    _, described, _ = cli.sdb("describe", "orders")
    shown = next(line for line in described.splitlines() if "Usage:" in line)
    assert ", 3.000 since " in shown  # the total: 1.5 CU for the two hours since


def test_pause_resume_park_set_the_state(cli: Operator, tmp_path: Path) -> None:
    cli.sdb("apply", "-f", str(manifest(tmp_path, "{}")))
    for verb, state in (("pause", "Paused"), ("park", "Parked"), ("resume", "Auto")):
        _, out, _ = cli.sdb(verb, "orders")
        assert f"spec.state: {state}" in out
        assert cli.get("orders").spec.state.value == state
    assert cli.get("orders").metadata.annotations[types.WAKE_ANNOTATION]  # resume asks for a wake
    cli.sdb("resume", "orders", "--pin")
    assert cli.get("orders").spec.state is types.State.ACTIVE
    assert cli.get("orders").metadata.generation == 5


def test_unknown_database_is_a_clear_error(cli: Operator) -> None:
    code, _, err = cli.sdb("describe", "nope", check=False)
    assert code == 1
    assert 'serverlessdatabase "default/nope" not found' in err


def test_state_dir_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from controller.app import cli as sdb_cli

    monkeypatch.setenv("SDB_STATE_DIR", str(tmp_path / "from-env"))
    assert sdb_cli.default_state_dir() == tmp_path / "from-env"
    monkeypatch.delenv("SDB_STATE_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert sdb_cli.default_state_dir() == tmp_path / "xdg" / "sdb"


HOSTILE = {
    # nine levels of ten aliases each: 10^9 strings if expanded
    "alias-bomb": (
        "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\nmetadata: {name: bomb}\n"
        'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8))
        + "spec: {postgres: {parameters: {search_path: *i}}}\n",
        "uses more than 64 YAML aliases",
    ),
    "labels-a-list": (
        "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\nmetadata: {name: odd, labels: [a, b]}\n",
        "metadata.labels: must be a map of strings to strings",
    ),
    "annotation-a-number": (
        "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\n"
        "metadata: {name: odd, annotations: {note: 7}}\n",
        "metadata.annotations: must be a map of strings to strings",
    ),
    "generation-a-word": (
        "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\nmetadata: {name: odd, generation: two}\n",
        "metadata.generation: must be an integer",
    ),
    "not-an-object": ("- just\n- a list\n", "(object): must be a mapping"),
    "binary": ("\udcff", "not UTF-8"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_input_gets_one_clear_error_and_no_traceback(
    cli: Operator, tmp_path: Path, case: str
) -> None:
    text, expected = HOSTILE[case]
    path = tmp_path / "hostile.yaml"
    path.write_bytes(text.encode(errors="surrogateescape"))
    code, _, err = cli.sdb("apply", "-f", str(path), check=False)
    assert code == 1
    assert expected in err
    assert "Traceback" not in err
    assert len(err) < 2000
    assert cli.store.keys() == []


def test_a_file_larger_than_the_api_servers_limit_is_refused_unread(cli: Operator, tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    label = "x" * (4 * 1024 * 1024)
    header = "apiVersion: dbscale.io/v1alpha1\nkind: ServerlessDatabase\n"
    path.write_text(f"{header}metadata: {{name: big, labels: {{a: {label}}}}}\n")
    code, _, err = cli.sdb("apply", "-f", str(path), check=False)
    assert code == 1
    assert "is larger than 3 MiB" in err


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (("--gateway-client-certificate", "/c.crt"), "--gateway-client-certificate and --gateway-client-key"),
        (("--oidc-issuer", "https://issuer.test"), "--oidc-issuer and --oidc-jwks go together"),
    ],
)
def test_the_activators_token_flags_come_in_pairs(
    capsys: pytest.CaptureFixture[str], flags: tuple[str, ...], expected: str
) -> None:
    from controller.app import cli as sdb_cli

    assert sdb_cli.main(["activator", *flags]) == 1
    err = capsys.readouterr().err
    assert expected in err
    assert "Traceback" not in err
