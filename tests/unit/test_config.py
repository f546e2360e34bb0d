"""Configuration validation: good files load; bad files fail with one line naming file and field."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from fedinfra.config import BudgetCaps, JobSpec, load_job, load_model, load_site, parse_model
from fedinfra.errors import ConfigError

VECTORS = Path(__file__).resolve().parents[1] / "vectors" / "config"

# file -> the field path the one-line error must name
BAD_JOBS = {
    "bad_job_unknown_key.toml": "roundz",
    "bad_job_nested_unknown_key.toml": "training.learning_rate",
    "bad_job_rounds_zero.toml": "rounds",
    "bad_job_rounds_type.toml": "rounds",
    "bad_job_scenario.toml": "scenario",
    "bad_job_alpha.toml": "data.alpha",
    "bad_job_min_sites.toml": "sites",
    "bad_job_privacy_no_target.toml": "privacy",
    "bad_job_privacy_delta.toml": "privacy.delta",
    "bad_job_quant_bits.toml": "secure_aggregation.quant_bits",
    "bad_job_table_type.toml": "model",
}
BAD_SITES = {
    "bad_site_unknown_key.toml": "colour",
    "bad_site_missing_organisation.toml": "organisation",
    "bad_site_name.toml": "name",
    "bad_site_jurisdiction.toml": "jurisdiction",
    "bad_site_sector.toml": "sector",
    "bad_site_purposes.toml": "purposes",
    "bad_site_dataset_no_label.toml": "dataset.label_column",
    "bad_site_dataset_unknown_key.toml": "dataset.delimiter",
    "bad_site_budget_delta.toml": "budget.delta",
    "bad_site_budget_negative.toml": "budget.epsilon_per_run",
}


def _assert_one_line_naming(exc: ConfigError, path: Path, field: str) -> None:
    message = str(exc)
    assert "\n" not in message
    assert str(path) in message
    assert f"'{field}'" in message


def test_every_bad_vector_is_listed() -> None:
    on_disk = {p.name for p in VECTORS.glob("bad_*.toml")}
    assert on_disk == set(BAD_JOBS) | set(BAD_SITES) | {"bad_job_syntax.toml"}


def test_full_job_loads_with_every_section() -> None:
    job = load_job(VECTORS / "good_job_full.toml")

    assert job.rounds == 10
    assert job.model.kind == "mlp"
    assert job.model.hidden == [64, 32]
    assert job.data.alpha == 0.3
    assert (job.sites.count, job.sites.min_sites) == (6, 3)
    assert job.training.server_momentum == 0.9
    assert job.privacy.mechanism == "dp-sgd"
    assert job.privacy.epsilon == 3.0
    assert job.secure_aggregation.mode == "bfv"
    assert job.secure_aggregation.quant_bits == 16
    assert job.policy_packs == ["gdpr", "hipaa"]


def test_an_empty_job_file_is_refused_not_read_as_the_defaults() -> None:
    # issue 18: a blank job.toml silently ran with no DP and no secure aggregation.
    with pytest.raises(ConfigError, match=r"good_job_minimal\.toml: the file is empty"):
        load_job(VECTORS / "good_job_minimal.toml")


def test_one_key_is_enough_every_other_field_has_a_default() -> None:
    job = parse_model(JobSpec, {"rounds": 5}, "job.toml")

    assert job == JobSpec(rounds=5)
    assert job.privacy.mechanism == "none"


def test_job_accepts_a_str_path() -> None:
    assert load_model(JobSpec, str(VECTORS / "good_job_full.toml")).seed == 7


@pytest.mark.parametrize(("name", "field"), sorted(BAD_JOBS.items()))
def test_bad_job_fails_with_one_line_naming_file_and_field(name: str, field: str) -> None:
    path = VECTORS / name

    with pytest.raises(ConfigError) as info:
        load_job(path)

    _assert_one_line_naming(info.value, path, field)


def test_unknown_key_error_says_what_to_do() -> None:
    with pytest.raises(ConfigError, match="unknown key; remove it or check its spelling"):
        load_job(VECTORS / "bad_job_unknown_key.toml")


def test_out_of_range_error_shows_the_bound_and_the_value() -> None:
    with pytest.raises(ConfigError, match=r"greater than or equal to 1 \(got 0\)"):
        load_job(VECTORS / "bad_job_rounds_zero.toml")


def test_invalid_toml_names_the_file_on_one_line() -> None:
    path = VECTORS / "bad_job_syntax.toml"

    with pytest.raises(ConfigError, match="invalid TOML") as info:
        load_job(path)

    assert "\n" not in str(info.value)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"

    with pytest.raises(ConfigError, match="file not found") as info:
        load_job(path)

    assert str(path) in str(info.value)


def test_directory_instead_of_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read file"):
        load_job(tmp_path)


def test_non_utf8_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\xe9"\n'.encode("latin-1"))

    with pytest.raises(ConfigError) as info:
        load_job(path)

    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_config_error_is_also_a_value_error_with_exit_code_2() -> None:
    with pytest.raises(ValueError) as info:
        load_job(VECTORS / "bad_job_rounds_zero.toml")

    assert isinstance(info.value, ConfigError)
    assert info.value.exit_code == 2


def test_loaded_job_is_frozen() -> None:
    job = load_job(VECTORS / "good_job_full.toml")

    with pytest.raises(ValueError):
        job.rounds = 3  # type: ignore[misc]


def test_site_manifest_loads_its_stable_fields() -> None:
    site = load_site(VECTORS / "good_site.toml")

    assert site.name == "hospital-a"
    assert site.organisation == "Example University Hospital"
    assert site.jurisdiction == "DE"
    assert site.sector == "health"
    assert site.purposes == ["medical-research"]
    assert site.dataset is not None
    assert site.dataset.label_column == "diagnosis"
    assert site.dataset.feature_columns == ["age", "radius_mean"]
    assert (site.budget.epsilon_per_run, site.budget.epsilon_lifetime, site.budget.delta) == (5.0, 20.0, 1e-6)


def test_minimal_site_gets_default_budget_and_no_dataset() -> None:
    site = load_site(VECTORS / "good_site_minimal.toml")

    assert site.sector == "finance"
    assert site.dataset is None
    assert site.purposes == []
    assert site.budget == BudgetCaps()


@pytest.mark.parametrize(("name", "field"), sorted(BAD_SITES.items()))
def test_bad_site_fails_with_one_line_naming_file_and_field(name: str, field: str) -> None:
    path = VECTORS / name

    with pytest.raises(ConfigError) as info:
        load_site(path)

    _assert_one_line_naming(info.value, path, field)


# --- compression under encryption ------------------------------------------------------------


def _edge_job(**overrides: object) -> dict[str, object]:
    return {"scenario": "edge", "data": {"dataset": "digits"}, **overrides}


def test_compression_composes_with_bfv_when_the_codec_does_the_quantization() -> None:
    job = JobSpec.model_validate(
        _edge_job(
            compression={"bits": 8, "clip": 0.5},
            secure_aggregation={"mode": "bfv", "quant_bits": 8, "clip": 1.0},
        )
    )
    assert job.compression is not None
    assert job.secure_aggregation.quant_bits == job.compression.bits


@pytest.mark.parametrize(
    ("compression", "secagg", "needle"),
    [
        ({"bits": 8, "topk_fraction": 0.1}, {"mode": "bfv", "quant_bits": 8}, "topk_fraction"),
        ({"bits": 8}, {"mode": "bfv", "quant_bits": 20}, "must equal secure_aggregation.quant_bits"),
        ({"bits": 8, "clip": 2.0}, {"mode": "bfv", "quant_bits": 8, "clip": 1.0}, "compression.clip"),
        ({"bits": 8}, {"mode": "ckks"}, "bfv"),
    ],
)
def test_compression_that_cannot_compose_with_encryption_is_refused(
    compression: dict[str, object], secagg: dict[str, object], needle: str
) -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(_edge_job(compression=compression, secure_aggregation=secagg))
    assert needle in str(info.value)


def test_user_level_dp_under_encryption_needs_unweighted_sites() -> None:
    with pytest.raises(ValidationError) as info:
        JobSpec.model_validate(
            _edge_job(privacy={"mechanism": "user-dp", "epsilon": 5.0}, secure_aggregation={"mode": "bfv"})
        )
    assert "example_cap" in str(info.value)
    user_dp = {"mechanism": "user-dp", "epsilon": 5.0}
    ok = JobSpec.model_validate(_edge_job(privacy=user_dp, secure_aggregation={"mode": "bfv", "example_cap": 1}))
    assert ok.secure_aggregation.example_cap == 1
