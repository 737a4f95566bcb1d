"""The API: the Python validator and the CRD's schema refuse the same specs, naming the field."""

from __future__ import annotations

import copy
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from support import crd_schema

from controller.api import codec, parameters, types, units
from controller.api.validation import validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = sorted((ROOT / "manifests" / "samples").glob("*.yaml"))


def database(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dbscale.io/v1alpha1",
        "kind": "ServerlessDatabase",
        "metadata": {"name": "orders", "namespace": "shop"},
        "spec": spec,
    }


# spec, the field the refusal must name, what the Python message must say
BAD_SPECS = [
    pytest.param(
        {"capacity": {"min": 4, "max": 2}},
        "spec.capacity.min",
        "must be <= spec.capacity.max (got 4 > 2)",
        id="min-above-max",
    ),
    pytest.param({"capacity": {"min": 0.3}}, "spec.capacity.min", "multiple of 0.25", id="capacity-0.3"),
    pytest.param({"capacity": {"max": 0}}, "spec.capacity.max", "between 0.25 and 64", id="capacity-zero"),
    pytest.param(
        {"storage": {"size": "-10Gi"}}, "spec.storage.size", "greater than zero", id="negative-storage"
    ),
    pytest.param({"storage": {"size": "0"}}, "spec.storage.size", "greater than zero", id="zero-storage"),
    pytest.param(
        {"state": "Sleeping"}, "spec.state", "must be one of Auto, Active, Paused, Parked", id="unknown-state"
    ),
    pytest.param(
        {"autoPause": {"idleAfter": "soon"}},
        "spec.autoPause.idleAfter",
        "must be Auto or a duration",
        id="idleAfter-soon",
    ),
    pytest.param(
        {"autoPause": {"idleAfter": "auto"}},
        "spec.autoPause.idleAfter",
        "must be Auto or a duration",
        id="idleAfter-auto-lower-case",
    ),
    pytest.param(
        {"autoPark": {"idleAfter": "Auto"}},
        "spec.autoPark.idleAfter",
        "must be a duration",
        id="park-idleAfter-auto",
    ),
    pytest.param(
        {"autoPause": {"idleAfter": "500ms"}},
        "spec.autoPause.idleAfter",
        "at least 1s",
        id="idleAfter-below-1s",
    ),
    pytest.param(
        {"autoPark": {"idleAfter": "3 days"}},
        "spec.autoPark.idleAfter",
        "must be a duration",
        id="park-idleAfter-words",
    ),
    pytest.param(
        {"scaling": {"targetCPU": 1.5}},
        "spec.scaling.targetCPU",
        "between 0.1 and 1.0",
        id="targetCPU-above-1",
    ),
    pytest.param(
        {"scaling": {"scaleDownDelay": "5 minutes"}},
        "spec.scaling.scaleDownDelay",
        "must be a duration",
        id="scaleDownDelay-words",
    ),
    pytest.param(
        {"scaling": {"schedules": [{"cron": "0 8 * * 1-5", "duration": "10h", "min": 8}]}},
        "spec.scaling.schedules[0].min",
        "within spec.capacity",
        id="schedule-above-ceiling",
    ),
    pytest.param(
        {"scaling": {"schedules": [{"cron": "every morning", "duration": "10h", "min": 1}]}},
        "spec.scaling.schedules[0].cron",
        "cron expression",
        id="schedule-bad-cron",
    ),
    pytest.param(
        {"postgres": {"parameters": {"shared_buffers": "1GB"}}},
        "spec.postgres.parameters.shared_buffers",
        "managed by the operator",
        id="managed-parameter",
    ),
    pytest.param(
        {"postgres": {"version": "sixteen"}}, "spec.postgres.version", "major version", id="bad-version"
    ),
    pytest.param({"tls": {"required": "yes"}}, "spec.tls.required", "true or false", id="tls-required-word"),
    pytest.param(
        {"pooling": {"enabled": 1}}, "spec.pooling.enabled", "true or false", id="pooling-enabled-1"
    ),
    pytest.param(
        {"pooling": {"mode": "statement"}},
        "spec.pooling.mode",
        "must be transaction or session (got 'statement')",
        id="pooling-statement-mode",
    ),
    pytest.param(
        {"pooling": {"maxClientConnections": 0}},
        "spec.pooling.maxClientConnections",
        "between 1 and 100000",
        id="pooling-no-clients",
    ),
    pytest.param(
        {"pooling": {"maxClientConnections": 1_000_000}},
        "spec.pooling.maxClientConnections",
        "between 1 and 100000",
        id="pooling-a-million-clients",
    ),
    pytest.param(
        {"pooling": {"maxClientConnections": "many"}},
        "spec.pooling.maxClientConnections",
        "must be an integer",
        id="pooling-clients-word",
    ),
    # Each of these ran a command, loaded a library, wrote outside the database or re-set how the
    # server is reached, when a spec could set them (the tenant-boundary review).
    *[
        pytest.param(
            {"postgres": {"parameters": {name: value}}},
            f"spec.postgres.parameters.{name}",
            "is not a setting a spec may set",
            id=f"refused-{name}",
        )
        for name, value in [
            ("archive_command", "id > /tmp/owned"),
            ("archive_mode", "on"),
            ("restore_command", "cp /etc/shadow %p"),
            ("session_preload_libraries", "plugin"),
            ("local_preload_libraries", "plugin"),
            ("dynamic_library_path", "/tmp"),
            ("logging_collector", "on"),
            ("log_directory", "/etc"),
            ("log_filename", "passwd"),
            ("external_pid_file", "/var/lib/other/sdb.conf"),
            ("include", "/tmp/evil.conf"),
            ("include_if_exists", "/tmp/evil.conf"),
            ("include_dir", "/tmp"),
            ("ssl_passphrase_command", "id"),
            ("krb_server_keyfile", "/etc/krb5.keytab"),
            ("listen_addresses", "0.0.0.0"),
            ("data_directory", "/"),
            ("hba_file", "/tmp/hba"),
            ("port", "5432"),
            ("ssl", "on"),
        ]
    ],
    pytest.param(
        {"postgres": {"parameters": {"shared_preload_libraries": "pg_stat_statements, evil"}}},
        "spec.postgres.parameters.shared_preload_libraries",
        "may only name auto_explain, pg_prewarm, pg_stat_statements",
        id="preload-outside-the-list",
    ),
    pytest.param(
        {"postgres": {"parameters": {"statement_timeout": "1s\nlisten_addresses = '*'"}}},
        "spec.postgres.parameters.statement_timeout",
        "single-line",
        id="parameter-value-with-newline",
    ),
    pytest.param(
        {"access": {"identities": [{"role": "postgres", "issuer": "https://i", "subject": "s"}]}},
        "spec.access.identities[0].role",
        "the operator's",
        id="identity-as-the-operator",
    ),
    pytest.param(
        {"access": {"identities": [{"role": "r", "issuer": "https://i"}]}},
        "spec.access.identities[0]",
        "issuer and subject",
        id="identity-without-subject",
    ),
    pytest.param(
        {"access": {"identities": [{"role": "Bad-Role", "serviceAccount": {"namespace": "a", "name": "b"}}]}},
        "spec.access.identities[0].role",
        "role name",
        id="identity-role-name",
    ),
    pytest.param({"capacity": {"min": "1"}}, "spec.capacity.min", "must be a number", id="capacity-string"),
    pytest.param(
        {"roles": [{"name": "root", "superuser": True}]},
        "spec.roles[0].superuser",
        "the operator makes no such role",
        id="role-superuser",
    ),
    pytest.param(
        {"roles": [{"name": "copier", "replication": True}]},
        "spec.roles[0].replication",
        "the operator makes no such role",
        id="role-replication",
    ),
    *[
        pytest.param(
            {"roles": [{"name": name}]}, "spec.roles[0].name", "is reserved", id=f"role-named-{name}"
        )
        for name in ("app", "postgres", "superuser", "pg_evil", "sdb_plaintext")
    ],
    pytest.param(
        {"roles": [{"name": "Alice"}]}, "spec.roles[0].name", "lower-case letters", id="role-name-upper-case"
    ),
    *[
        pytest.param(
            {"roles": [{"name": "alice", "inRoles": [group]}]},
            "spec.roles[0].inRoles[0]",
            f"may not be {group!r}",
            id=f"member-of-{group}",
        )
        for group in (
            "superuser",
            "postgres",
            "pg_write_server_files",
            "pg_execute_server_program",
            "sdb_plaintext",
        )
    ],
    pytest.param(
        {"roles": [{"name": "alice", "connectionLimit": -5}]},
        "spec.roles[0].connectionLimit",
        "from -1 to 10000",
        id="connection-limit-below-minus-one",
    ),
    pytest.param(
        {"roles": [{"name": "alice", "ensure": "gone"}]},
        "spec.roles[0].ensure",
        "present or absent",
        id="role-ensure-unknown",
    ),
    pytest.param(
        {"databases": [{"name": "shop", "owner": "nobody"}]},
        "spec.databases[0].owner",
        "must be app or a role in spec.roles that is present",
        id="database-owner-undeclared",
    ),
    pytest.param(
        {"roles": [{"name": "alice", "ensure": "absent"}], "databases": [{"name": "shop", "owner": "alice"}]},
        "spec.databases[0].owner",
        "must be app or a role in spec.roles that is present",
        id="database-owner-absent",
    ),
    pytest.param(
        {"databases": [{"name": "template1", "owner": "app"}]},
        "spec.databases[0].name",
        "is reserved",
        id="database-template1",
    ),
    pytest.param(
        {"databases": [{"name": "app", "owner": "app", "ensure": "absent"}]},
        "spec.databases[0].ensure",
        "cannot be dropped",
        id="app-database-dropped",
    ),
    pytest.param(
        {"databases": [{"name": "shop", "owner": "app", "extensions": ["bad name"]}]},
        "spec.databases[0].extensions[0]",
        "must be an extension name",
        id="extension-name",
    ),
    pytest.param(
        {"autoPause": {"enabled": "yes"}}, "spec.autoPause.enabled", "true or false", id="enabled-string"
    ),
]


@pytest.mark.parametrize(("spec", "field", "message"), BAD_SPECS)
def test_validator_names_the_field(spec: dict[str, Any], field: str, message: str) -> None:
    errors = validate(database(**spec))
    assert [e.path for e in errors] == [field], errors
    assert message in errors[0].message


@pytest.mark.parametrize(("spec", "field", "message"), BAD_SPECS)
def test_crd_schema_refuses_the_same_specs(spec: dict[str, Any], field: str, message: str) -> None:
    problems = crd_schema.validate(database(**spec))
    assert problems, f"the CRD accepted {spec}"
    # A schema error names the path as JSON Schema does; a CEL rule names it in its message.
    leaf = field.rsplit(".", 1)[-1].split("[", 1)[0]
    assert any(leaf in p for p in problems), problems


@pytest.mark.parametrize(
    ("metadata", "field", "message"),
    [
        pytest.param({"name": "nl\n"}, "metadata.name", "lower-case letters", id="name-trailing-newline"),
        pytest.param({"name": "ok", "labels": ["a"]}, "metadata.labels", "map of strings", id="labels-list"),
        pytest.param(
            {"name": "ok", "labels": {"team": "x" * 50_000_000}},
            "metadata.labels.team",
            "at most 63",
            id="label-of-50-MB",
        ),
        pytest.param(
            {"name": "ok", "annotations": {"note": 7}},
            "metadata.annotations",
            "map of strings",
            id="annotation-int",
        ),
        pytest.param(
            {"name": "ok", "annotations": {"note": "x" * 300_000}},
            "metadata.annotations",
            "256 KiB",
            id="annotations-too-big",
        ),
        pytest.param(
            {"name": "ok", "generation": "two"}, "metadata.generation", "integer", id="generation-string"
        ),
        pytest.param(
            {"name": "ok", "labels": {"bad key!": "v"}},
            "metadata.labels.bad key!",
            "valid key",
            id="label-key",
        ),
    ],
)
def test_metadata_is_checked_within_kubernetes_limits(
    metadata: dict[str, Any], field: str, message: str
) -> None:
    errors = validate({**database(), "metadata": {"namespace": "shop", **metadata}})
    assert [e.path for e in errors] == [field], errors
    assert message in errors[0].message
    assert len(str(errors[0])) < 400  # a refusal never echoes a huge value back


def test_a_guc_name_with_a_trailing_newline_is_refused() -> None:
    errors = validate(database(postgres={"parameters": {"statement_timeout\n": "1s"}}))
    assert [e.message for e in errors] == ["is not a valid Postgres setting name"]


def test_every_problem_is_reported_at_once() -> None:
    errors = validate(
        database(
            capacity={"min": 0.3, "max": 0}, state="Sleeping", autoPause={"idleAfter": "soon"}, colour="blue"
        )
    )
    assert {e.path for e in errors} == {
        "spec.capacity.min",
        "spec.capacity.max",
        "spec.state",
        "spec.autoPause.idleAfter",
        "spec.colour",
    }
    assert "spec.colour: unknown field" in [str(e) for e in errors]


@pytest.mark.parametrize("name", ["Orders", "1db", "a" * 51, "with_underscore", ""])
def test_names_that_cannot_name_kubernetes_objects_are_refused(name: str) -> None:
    obj = database()
    obj["metadata"]["name"] = name
    assert [e.path for e in validate(obj)] == ["metadata.name"]
    if name:
        assert crd_schema.validate(obj)


@pytest.mark.parametrize("path", SAMPLES, ids=lambda p: p.name)
def test_samples_are_valid_for_both_validators(path: Path) -> None:
    obj = yaml.safe_load(path.read_text())
    assert validate(obj) == []
    assert crd_schema.validate(obj) == []


def test_samples_cover_minimal_full_and_always_on() -> None:
    specs = {p.stem: yaml.safe_load(p.read_text())["spec"] for p in SAMPLES}
    assert specs["minimal"] == {}
    assert specs["always-on"]["autoPause"]["enabled"] is False
    full = specs["full"]
    assert set(full) == {"postgres", "storage", "capacity", "scaling", "autoPause", "autoPark", "state"}


def test_python_defaults_match_the_crd_defaults() -> None:
    """An empty spec decodes to the same values the API server would default it to."""
    defaulted = crd_schema.apply_defaults(crd_schema.openapi_schema(), database())
    from_crd = codec.decode(defaulted).spec
    assert from_crd == codec.decode(database()).spec == types.DatabaseSpec()


def test_codec_round_trips_a_full_spec() -> None:
    obj = yaml.safe_load((ROOT / "manifests/samples/full.yaml").read_text())
    db = codec.decode(obj)
    assert db.spec.scaling.schedules[0].duration == timedelta(hours=10)
    assert db.spec.auto_pause.idle_after == timedelta(minutes=10)
    again = codec.decode(codec.encode(db))
    assert again.spec == db.spec
    assert again.metadata.key == "shop/orders"


def test_idle_after_auto_is_accepted_by_both_and_round_trips() -> None:
    obj = database(autoPause={"idleAfter": "Auto"})
    assert validate(obj) == []
    assert crd_schema.validate(obj) == []
    db = codec.decode(obj)
    assert db.spec.auto_pause.idle_after_auto
    assert db.spec.auto_pause.idle_after == types.AutoPauseSpec().idle_after  # until gaps are known
    assert codec.encode(db)["spec"]["autoPause"]["idleAfter"] == "Auto"
    assert codec.decode(codec.encode(db)).spec == db.spec


def test_learned_status_round_trips() -> None:
    now = units.parse_time("2026-11-26T10:00:00.123456Z")
    learned = types.Learned(
        load=(types.LoadSample(now, 0.5), types.LoadSample(now + timedelta(seconds=10), 0.75)),
        shortfalls=(now,),
        cache_peaks=(types.Peak(1.5, now), types.Peak(0.5)),
        surges=(types.LoadSample(now, 2.25),),
        grown_at=now,
    )
    status = types.DatabaseStatus(
        capacity=types.CapacityStatus(current=1.0, desired=1.0, learned=learned),
        auto_pause=types.AutoPauseStatus(gaps=(90, 4000), idle_after=timedelta(minutes=2)),
    )
    assert codec.decode_status(codec.encode_status(status)) == status
    empty = codec.encode_status(types.DatabaseStatus())
    assert "learned" not in empty["capacity"]  # nothing learned: nothing written
    assert "autoPause" not in empty


def test_codec_round_trips_declared_roles_and_databases() -> None:
    db = codec.decode(yaml.safe_load((ROOT / "manifests/samples/roles.yaml").read_text()))
    writer, analyst, legacy = db.spec.roles
    assert (writer.login, writer.password_secret, writer.inherit, writer.connection_limit) == (
        True,
        "orders-writer",
        True,
        -1,
    )
    assert (analyst.in_roles, analyst.connection_limit) == (("pg_read_all_data",), 5)
    assert legacy.ensure is types.Ensure.ABSENT
    assert db.spec.databases[0] == types.DeclaredDatabase("ledger", "writer", ("pgcrypto",))
    assert codec.decode(codec.encode(db)).spec == db.spec
    # the API server's defaults and the Python ones agree for a declared role, too
    defaulted = crd_schema.apply_defaults(crd_schema.openapi_schema(), database(roles=[{"name": "x"}]))
    assert codec.decode(defaulted).spec.roles == (types.RoleSpec("x"),)


def test_a_role_name_declared_twice_is_refused() -> None:
    errors = validate(database(roles=[{"name": "alice"}, {"name": "alice"}]))
    assert [(e.path, e.message) for e in errors] == [("spec.roles[1].name", "is declared twice: 'alice'")]


def test_status_round_trips() -> None:
    now = units.parse_time("2026-11-26T10:00:00.123456Z")
    status = types.DatabaseStatus(
        phase=types.Phase.PAUSED,
        phase_since=now,
        capacity=types.CapacityStatus(
            current=None, desired=1.0, peaks=(types.Peak(2.0, now), types.Peak(1.0))
        ),
        connections=3,
        last_activity_time=now,
        endpoint="127.0.0.1:5432",
        conditions=(
            types.Condition(types.ConditionType.READY, types.ConditionStatus.FALSE, "Paused", "m", now, 3),
        ),
        observed_generation=3,
        wake_request="t1",
        compute=types.ComputeStatus(access="abc", access_time=now),
        roles=(
            types.ObjectStatus("alice", types.Applied.APPLIED),
            types.ObjectStatus("bob", types.Applied.FAILED, "2BP01: role bob cannot be dropped"),
        ),
        databases=(types.ObjectStatus("shop", types.Applied.APPLIED),),
    )
    assert codec.decode_status(codec.encode_status(status)) == status


def test_crd_fields_all_have_descriptions() -> None:
    """`kubectl explain` is only useful when every field says what it is for."""
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for name, prop in node.get("properties", {}).items():
            here = f"{path}.{name}"
            if name != "metadata" and not prop.get("description"):
                missing.append(here)
            walk(prop, here)
        if "items" in node:
            walk(node["items"], path + "[]")

    walk(crd_schema.openapi_schema(), "")
    assert missing == []


def test_crd_has_printer_columns_status_and_short_name() -> None:
    crd = crd_schema.load_crd()
    version = crd["spec"]["versions"][0]
    assert crd["spec"]["names"]["shortNames"] == ["sdb"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:5] == ["Phase", "Capacity", "Min", "Max", "Connections"]
    assert columns[-1] == "Age"
    rules = crd_schema.cel_rules()
    assert "self.min <= self.max" in rules


def test_generated_crd_manifest_matches_the_chart() -> None:
    """manifests/crd.yaml is made from the chart's CRDs by `make manifests`; it must not drift."""
    generated = (ROOT / "manifests/crd.yaml").read_text().splitlines(keepends=True)
    body = "".join(line for line in generated if not line.startswith("# "))
    assert generated[0].startswith("# Generated from charts/serverless-db-operator/crds/")
    crds = sorted(crd_schema.CRD_PATH.parent.glob("*.yaml"))
    assert body == "---\n".join(path.read_text() for path in crds)


def test_durations_and_quantities() -> None:
    assert units.parse_duration("1h30m") == timedelta(minutes=90)
    assert units.format_duration(timedelta(minutes=90)) == "1h30m"
    assert units.format_duration(timedelta(seconds=1.5)) == "1.5s"
    assert units.parse_bytes("10Gi") == 10 * 1024**3
    with pytest.raises(ValueError, match="duration"):
        units.parse_duration("5 m")
    assert units.round_up_to_step(1.01) == 1.25
    assert units.round_up_to_step(1.0000000001) == 1.0
    assert copy.copy(units.CU_STEP) == 0.25


def test_the_crd_allows_exactly_the_parameters_the_validator_allows() -> None:
    rules = crd_schema.openapi_schema()["properties"]["spec"]["properties"]["postgres"]["properties"][
        "parameters"
    ]["x-kubernetes-validations"]
    allow_rule, preload_rule = rules[0], rules[3]
    assert set(re.findall(r"'([a-z_.]+)'", allow_rule["rule"])) == parameters.ALLOWED
    assert (
        set(re.findall(r"'([a-z_.]+)'", allow_rule["messageExpression"])) - {"spec.postgres.parameters."}
        == parameters.ALLOWED
    )
    named = set(re.findall(r"'([a-z_]+)'", preload_rule["rule"])) - {"shared_preload_libraries"}
    assert tuple(sorted(named)) == parameters.PRELOADABLE
