"""Settings from defaults, a TOML file and the environment; errors name key and source."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventcore.config import DEFAULT_QUEUES, Settings, load_settings, to_toml_dict
from eventcore.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "eventcore.toml"
    path.write_text(text)
    return path


def config_error(path: Path | None = None, **env: str) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_settings(path, env=env)
    return info.value


# -- where values come from --------------------------------------------------


def test_defaults_with_no_file_and_empty_env() -> None:
    s = load_settings(env={})
    assert s == Settings()
    assert s.redis.url is None
    assert s.partitions == 1
    assert [q.name for q in s.queues] == ["gpu-high", "gpu-low", "cpu-heavy", "cpu-light"]


def test_toml_overrides_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        namespace = "prod"
        partitions = 4
        [redis]
        url = "redis://db:6379/0"
        durability = "durable"
        [web]
        port = 9000
        [models.files]
        lama = "big-lama.pt"
        """,
    )
    s = load_settings(path, env={})
    assert (s.namespace, s.partitions, s.web.port) == ("prod", 4, 9000)
    assert (s.redis.url, s.redis.durability) == ("redis://db:6379/0", "durable")
    assert s.web.host == "127.0.0.1"  # untouched keys of a table keep their defaults
    assert s.models.files == {"lama": "big-lama.pt"}


def test_env_overrides_toml_and_merges_with_it(tmp_path: Path) -> None:
    path = write(tmp_path, '[web]\nhost = "0.0.0.0"\nport = 9000\n')
    s = load_settings(path, env={"EVENTCORE_WEB__PORT": "8080"})
    assert (s.web.host, s.web.port) == ("0.0.0.0", 8080)


def test_nested_and_top_level_env_keys() -> None:
    s = load_settings(
        env={
            "EVENTCORE_PARTITIONS": "4",
            "EVENTCORE_NAMESPACE": "staging",
            "EVENTCORE_REDIS__DATA_DIR": "/var/lib/ec",
            "EVENTCORE_WORKER__HEARTBEAT_INTERVAL": "2.5",
        }
    )
    assert (s.partitions, s.namespace) == (4, "staging")
    assert s.redis.data_dir == "/var/lib/ec"
    assert s.worker.heartbeat_interval == 2.5


def test_int_and_bool_from_env_strings() -> None:
    s = load_settings(env={"EVENTCORE_WEB__AUTH": "true", "EVENTCORE_WORKER__CONCURRENCY": "8"})
    assert s.web.auth is True
    assert s.worker.concurrency == 8
    assert load_settings(env={"EVENTCORE_WEB__AUTH": "0"}).web.auth is False


def test_plain_redis_url_and_the_prefixed_one_wins() -> None:
    assert load_settings(env={"REDIS_URL": "redis://a"}).redis.url == "redis://a"
    both = {"REDIS_URL": "redis://a", "EVENTCORE_REDIS__URL": "redis://b"}
    assert load_settings(env=both).redis.url == "redis://b"
    # compose files often pass REDIS_URL through empty: that means embedded.
    assert load_settings(env={"REDIS_URL": ""}).redis.url is None


def test_env_lists_as_json_or_commas() -> None:
    as_json = load_settings(env={"EVENTCORE_WORKER__QUEUES": '["cpu-light"]'})
    assert as_json.worker.queues == ("cpu-light",)
    as_commas = load_settings(env={"EVENTCORE_WORKER__QUEUES": "cpu-light, cpu-heavy"})
    assert as_commas.worker.queues == ("cpu-light", "cpu-heavy")
    assert load_settings(env={"EVENTCORE_WORKER__QUEUES": ""}).worker.queues == ()


def test_eventcore_config_picks_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 3\n")
    assert load_settings(env={"EVENTCORE_CONFIG": str(path)}).partitions == 3


def test_explicit_path_beats_eventcore_config(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 3\n")
    s = load_settings(path, env={"EVENTCORE_CONFIG": str(tmp_path / "absent.toml")})
    assert s.partitions == 3


def test_toml_queues_replace_the_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [[queues]]
        name = "inpaint"
        gpu = true
        min_gpu_memory_mb = 4096
        models = ["lama"]
        hard_timeout = 60.0
        retry = { max_retries = 1, backoff = "fixed" }

        [[queues]]
        name = "thumbs"

        [worker]
        queues = ["thumbs"]
        """,
    )
    s = load_settings(path, env={})
    assert [q.name for q in s.queues] == ["inpaint", "thumbs"]
    inpaint = s.queues[0]
    assert (inpaint.gpu, inpaint.min_gpu_memory_mb, inpaint.models) == (True, 4096, ("lama",))
    assert inpaint.retry.max_retries == 1
    assert s.queues[1] == msgspec.structs.replace(DEFAULT_QUEUES[3], name="thumbs")
    assert s.worker.queues == ("thumbs",)


def test_queues_from_env_json() -> None:
    s = load_settings(env={"EVENTCORE_QUEUES": '[{"name": "only", "lease_ms": "500"}]'})
    assert [(q.name, q.lease_ms) for q in s.queues] == [("only", 500)]


def test_test_suite_variables_are_not_keys() -> None:
    assert load_settings(env={"EVENTCORE_TEST_PARTITIONS": "4"}) == Settings()


def test_to_toml_dict_converts_back_to_the_same_settings() -> None:
    s = load_settings(env={"EVENTCORE_WEB__PORT": "1234", "EVENTCORE_PARTITIONS": "2"})
    data = to_toml_dict(s)
    assert "url" not in data["redis"]  # TOML has no null
    assert data["web"]["port"] == 1234
    assert msgspec.convert(data, Settings) == s


def test_redis_pool_keys_from_env_reach_the_client_options() -> None:
    from eventcore.server.target import client_options

    s = load_settings(
        env={"EVENTCORE_REDIS__MAX_CONNECTIONS": "40", "EVENTCORE_REDIS__POOL_TIMEOUT": "2.5"}
    )
    assert (s.redis.max_connections, s.redis.pool_timeout) == (40, 2.5)
    opts = client_options(s)
    assert (opts.max_connections, opts.pool_timeout) == (40, 2.5)


# -- errors name the key and the source ----------------------------------------


def test_bad_int_in_env() -> None:
    e = config_error(EVENTCORE_WEB__PORT="eighty")
    assert (e.key, e.source) == ("web.port", "EVENTCORE_WEB__PORT")
    assert "`int`" in e.detail and "'eighty'" in e.detail
    assert "web.port" in str(e) and "EVENTCORE_WEB__PORT" in str(e)


def test_bad_type_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path, '[web]\nport = "8080"\n')
    e = config_error(path)
    assert (e.key, e.source) == ("web.port", str(path))
    assert "`int`" in e.detail and "'8080'" in e.detail


def test_bad_value_deep_in_a_toml_queue(tmp_path: Path) -> None:
    path = write(tmp_path, '[[queues]]\nname = "a"\n[[queues]]\nname = "b"\nmin_cores = -2\n')
    e = config_error(path)
    assert (e.key, e.source) == ("queues[1].min_cores", str(path))


def test_bad_literal_lists_the_choices(tmp_path: Path) -> None:
    path = write(tmp_path, '[redis]\ndurability = "sometimes"\n')
    e = config_error(path)
    assert e.key == "redis.durability"
    assert "'durable'" in e.detail and "'fast'" in e.detail and "'sometimes'" in e.detail


def test_unknown_key_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[web]\nprot = 8080\n")
    e = config_error(path)
    assert (e.key, e.source) == ("web.prot", str(path))
    assert "port" in e.detail  # the valid keys are listed


def test_missing_queue_name_in_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[[queues]]\ngpu = true\n")
    e = config_error(path)
    assert (e.key, e.source) == ("queues[0].name", str(path))


def test_unknown_eventcore_variable() -> None:
    e = config_error(EVENTCORE_PARTITONS="2")
    assert e.source == "EVENTCORE_PARTITONS"
    assert "EVENTCORE_PARTITONS" in str(e)


def test_single_underscore_variable_suggests_the_double_one() -> None:
    e = config_error(EVENTCORE_REDIS_URL="redis://x")
    assert e.source == "EVENTCORE_REDIS_URL"
    assert "EVENTCORE_REDIS__URL" in e.detail


def test_variable_naming_a_whole_table_is_refused() -> None:
    e = config_error(EVENTCORE_WEB='{"port": 1}')
    assert e.source == "EVENTCORE_WEB"


def test_partitions_zero() -> None:
    e = config_error(EVENTCORE_PARTITIONS="0")
    assert (e.key, e.source) == ("partitions", "EVENTCORE_PARTITIONS")
    assert ">= 1" in e.detail


@pytest.mark.parametrize(
    ("var", "value", "key", "bound"),
    [
        ("EVENTCORE_REDIS__MAX_CONNECTIONS", "0", "redis.max_connections", ">= 1"),
        ("EVENTCORE_REDIS__POOL_TIMEOUT", "0", "redis.pool_timeout", "> 0"),
    ],
)
def test_redis_pool_keys_must_be_positive(var: str, value: str, key: str, bound: str) -> None:
    e = config_error(**{var: value})
    assert (e.key, e.source) == (key, var)
    assert bound in e.detail


def test_bad_queue_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[[queues]]\nname = "ok"\n[[queues]]\nname = "has space"\n')
    e = config_error(path)
    assert (e.key, e.source) == ("queues[1].name", str(path))
    assert "'has space'" in e.detail


def test_bad_namespace_from_env() -> None:
    e = config_error(EVENTCORE_NAMESPACE="a:b")
    assert (e.key, e.source) == ("namespace", "EVENTCORE_NAMESPACE")


def test_duplicate_queue_name(tmp_path: Path) -> None:
    path = write(tmp_path, '[[queues]]\nname = "a"\n[[queues]]\nname = "a"\n')
    e = config_error(path)
    assert (e.key, e.source) == ("queues[1].name", str(path))
    assert "twice" in e.detail


def test_worker_queue_not_declared(tmp_path: Path) -> None:
    path = write(tmp_path, '[[queues]]\nname = "a"\n')
    e = config_error(path, EVENTCORE_WORKER__QUEUES="a,cpu-light")
    assert (e.key, e.source) == ("worker.queues[1]", "EVENTCORE_WORKER__QUEUES")
    assert "'cpu-light'" in e.detail


def test_invalid_json_in_env() -> None:
    e = config_error(EVENTCORE_WORKER__QUEUES='["cpu-light"')
    assert (e.key, e.source) == ("worker.queues", "EVENTCORE_WORKER__QUEUES")


def test_invalid_toml_syntax_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "partitions = 2\n[web\nport = 1\n")
    e = config_error(path)
    assert e.source == str(path)
    assert "line 2" in str(e)


def test_missing_explicit_file(tmp_path: Path) -> None:
    e = config_error(tmp_path / "absent.toml")
    assert str(tmp_path / "absent.toml") in str(e)


def test_missing_file_from_eventcore_config(tmp_path: Path) -> None:
    e = config_error(EVENTCORE_CONFIG=str(tmp_path / "absent.toml"))
    assert "absent.toml" in e.source and "EVENTCORE_CONFIG" in e.source


def test_heartbeat_timeout_must_exceed_interval() -> None:
    e = config_error(EVENTCORE_WORKER__HEARTBEAT_INTERVAL="30")
    assert (e.key, e.source) == (
        "worker.heartbeat_interval",
        "EVENTCORE_WORKER__HEARTBEAT_INTERVAL",
    )


def test_source_of_a_file_key_survives_an_env_sibling(tmp_path: Path) -> None:
    """Regression: a table first created by one layer was recorded whole as that
    layer's, so an env var setting one worker key claimed the file's bad sibling."""
    path = write(tmp_path, '[worker]\ngpu = "sometimes"\n')
    e = config_error(path, EVENTCORE_WORKER__CONCURRENCY="2")
    assert (e.key, e.source) == ("worker.gpu", str(path))


# -- properties ------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=2**62))
def test_any_positive_partition_count_round_trips(n: int) -> None:
    assert load_settings(env={"EVENTCORE_PARTITIONS": str(n)}).partitions == n


@given(st.integers(max_value=0))
def test_any_non_positive_partition_count_fails(n: int) -> None:
    with pytest.raises(ConfigError, match="EVENTCORE_PARTITIONS"):
        load_settings(env={"EVENTCORE_PARTITIONS": str(n)})


@given(st.integers())
def test_port_accepted_exactly_in_range(port: int) -> None:
    env = {"EVENTCORE_WEB__PORT": str(port)}
    if 0 <= port <= 65535:
        assert load_settings(env=env).web.port == port
    else:
        with pytest.raises(ConfigError, match=r"web\.port"):
            load_settings(env=env)
