"""`soft-dist serve`'s options and deployments as built, without a cluster: bad options name themselves
before anything starts, replica and autoscaling settings reach the deployments, the cluster Serve config
passes Serve's schema."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from soft_dist.bench.predict import write_untrained_model
from soft_dist.cli import main
from soft_dist.config import ConfigError
from soft_dist.web.options import ServeOptions


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return write_untrained_model(tmp_path_factory.mktemp("serve-model"), 48)


def _deployments(app) -> dict:
    """deployment name -> Deployment, of build_app's bound application (the gateway binds the other two)."""
    gateway = app._bound_deployment
    return {gateway.name: gateway, **{a._bound_deployment.name: a._bound_deployment for a in gateway.init_args[:2]}}


def test_replicas_and_autoscaling_reach_the_deployments(model):
    from soft_dist.web.app import build_app

    fixed = _deployments(build_app(ServeOptions(model=str(model), replicas=2, max_batch_size=8, replica_cpus=0.5)))
    assert set(fixed) == {"gateway", "align", "classify"}
    for name in ("align", "classify"):
        config = fixed[name]._deployment_config
        assert (fixed[name].num_replicas, config.autoscaling_config) == (2, None)
        # a replica must hold a whole batch of requests, or batches never fill
        assert config.max_ongoing_requests == 16 and fixed[name].ray_actor_options["num_cpus"] == 0.5
    assert fixed["gateway"].ray_actor_options["num_cpus"] == 0
    gpu = _deployments(build_app(ServeOptions(model=str(model), device="cuda")))
    assert gpu["align"].ray_actor_options["num_gpus"] == gpu["classify"].ray_actor_options["num_gpus"] == 0.5
    assert "num_gpus" not in fixed["align"].ray_actor_options
    auto = _deployments(build_app(ServeOptions(model=str(model), replicas="auto", max_replicas=3)))
    for name in ("align", "classify"):
        scaling = auto[name]._deployment_config.autoscaling_config
        assert (scaling.min_replicas, scaling.max_replicas, scaling.target_ongoing_requests) == (1, 3, 16)


def test_bad_options_exit_2_before_anything_starts(model, tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing.pt")]) == 2
    assert "nothing.pt" in capsys.readouterr().err
    assert main(["serve", str(model), "--replicas", "two"]) == 2
    assert "--replicas" in capsys.readouterr().err
    assert main(["serve", str(model), "--max-batch-size", "0"]) == 2
    assert "--max-batch-size" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        assert main(["serve", str(model), "--port", str(busy.getsockname()[1])]) == 2
    assert "--port" in capsys.readouterr().err


def test_the_cluster_serve_config_is_valid():
    """launch/serve_config.yaml passes Serve's own schema, and its args are soft-dist serve's options."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "launch" / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    assert schema.http_options.port == 8000 and schema.proxy_location == "EveryNode"
    [app] = config["applications"]
    assert app["import_path"] == "soft_dist.web.app:app_builder"
    ServeOptions.from_dict(app["args"])
    with pytest.raises(ConfigError, match="replica_count"):
        ServeOptions.from_dict({**app["args"], "replica_count": 2})
