import json

import pytest
import yaml

from rac.config import ActorPoolConfig, ConfigError, config_reference, parse_config, to_dict, write_run_info
from rac.retrieval import RetrieveConfig


def test_yaml_then_command_line_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("retriever:\n  top_k: 7\n  k1: 1.5\npool:\n  max_size: 3\noutput_dir: out\n")
    cfg = parse_config(RetrieveConfig, ["--config", str(path), "--retriever.top_k", "3",
                                        "--retriever.elasticsearch.url=http://127.0.0.1:9200"])
    assert cfg.retriever.top_k == 3  # command line wins over the file
    assert cfg.retriever.k1 == 1.5
    assert cfg.pool.max_size == 3
    assert cfg.output_dir == "out"
    assert cfg.retriever.backend == "elasticsearch"
    assert parse_config(RetrieveConfig, []).retriever.backend == "embedded"


def test_unknown_key_names_the_key_and_suggests(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("retriever:\n  topk: 7\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'retriever.topk'.*Did you mean 'retriever.top_k'"):
        parse_config(RetrieveConfig, ["--config", str(path)])
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        parse_config(RetrieveConfig, ["--nope", "1"])


@pytest.mark.parametrize(("args", "message"), [
    (["--retriever.b", "1.5"], r"b must be in \[0, 1\], got 1.5"),
    (["--retriever.top_k", "many"], "retriever.top_k must be an integer, got 'many'"),
    (["--pool.min_size", "3", "--pool.max_size", "2"], r"max_size \(2\) must be >= min_size \(3\)"),
    (["--data.format", "qulac"], "data.path is required"),
    (["--data.format", "csv"], "must be one of"),
    (["--retriever.elasticsearch.url", "localhost:9200"], "must start with http"),
    (["--config", "/no/such.yaml"], "does not exist"),
])
def test_impossible_values_say_what_to_change(args, message):
    with pytest.raises(ConfigError, match=message):
        parse_config(RetrieveConfig, args)


def test_help_lists_every_key_with_help(capsys):
    with pytest.raises(SystemExit):
        parse_config(RetrieveConfig, ["--help"])
    out = capsys.readouterr().out
    assert "retriever.elasticsearch.api_key_env" in out
    assert "BM25 k1" in out
    assert config_reference(ActorPoolConfig).count("\n") == 5


def test_run_info_records_config_versions_and_revision(tmp_path):
    cfg = parse_config(RetrieveConfig, ["--retriever.top_k", "4"])
    write_run_info(tmp_path, "retrieve", cfg, summary={"rows": 1})
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == to_dict(cfg)
    info = json.loads((tmp_path / "run_info.json").read_text())
    assert info["stage"] == "retrieve"
    assert info["versions"]["ray"] == "2.60.0"
    assert info["git_revision"]  # a revision or "unknown", never missing
    assert info["summary"] == {"rows": 1}
