"""Trainers: how a declared model is fitted, checkpointed and described in its lineage.

Each trainer takes keyword-only hyperparameters and stores them unchanged; ``fit`` returns the
fitted model; ``effective_params`` reads the hyperparameters back from the fitted model
(defaults included), and ``record``/``from_record`` turn a trainer into lineage and back, so
a registered version can be retrained exactly. Boosters train in fixed chunks of rounds and
checkpoint at each chunk's end; a preempted run resumes from its newest good checkpoint to
the same bytes an uninterrupted run produces.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from keel.errors import ValidationError, did_you_mean
from keel.registry.formats import import_object
from keel.training.checkpoint import Checkpoint, CheckpointStore, Preempted, Preemption

__all__ = [
    "TRAINERS",
    "LightGBM",
    "RunContext",
    "Sklearn",
    "Trainer",
    "XGBoost",
    "trainer_from_record",
]

Progress = Callable[[int, int], None]


@dataclass
class RunContext:
    """What a fit needs besides the data: where to checkpoint, how often, how to be told to
    stop, and where to report progress (``progress(done, total)``)."""

    checkpoints: CheckpointStore | None = None
    preemption: Preemption = field(default_factory=Preemption)
    data_sha256: str = ""
    progress: Progress | None = None
    #: Steps or rounds resumed from, when the run started from a checkpoint.
    resumed_from: int | None = None
    #: Seconds from the start of ``fit`` to the first new step (resume cost).
    first_step_s: float | None = None
    checkpoint_s: float = 0.0
    checkpoints_written: int = 0

    def resume(self) -> Checkpoint | None:
        """The newest good checkpoint of this data, if any; one of other data is refused."""
        if self.checkpoints is None:
            return None
        cp = self.checkpoints.latest()
        if cp is None:
            return None
        if cp.meta.get("data_sha256") != self.data_sha256:
            raise ValidationError(
                f"checkpoint {cp.path} was written for another training set "
                f"({str(cp.meta.get('data_sha256'))[:12]}…, this one {self.data_sha256[:12]}…); "
                "clear the run's checkpoints to start over"
            )
        self.resumed_from = cp.step
        return cp

    def save(self, step: int, payload: bytes, meta: dict[str, Any]) -> None:
        if self.checkpoints is None:
            return
        start = time.perf_counter()
        self.checkpoints.save(step, payload, {"data_sha256": self.data_sha256, **meta})
        self.checkpoint_s += time.perf_counter() - start
        self.checkpoints_written += 1

    def report(self, done: int, total: int) -> None:
        if self.progress is not None:
            self.progress(done, total)


class Trainer(ABC):
    """Fits one kind of model on a numeric matrix ``x`` (rows × features) and labels ``y``."""

    kind: ClassVar[str]
    #: The registry format the fitted model is stored in.
    format: ClassVar[str]

    @abstractmethod
    def validate(self) -> None:
        """Raise :class:`ValidationError` naming every hyperparameter this trainer does not
        accept."""

    @abstractmethod
    def fit(self, x: np.ndarray, y: np.ndarray, names: list[str], ctx: RunContext) -> Any: ...

    @abstractmethod
    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        """Scores: the positive class's probability, or the regression value."""

    @abstractmethod
    def effective_params(self, model: Any) -> dict[str, Any]: ...

    @abstractmethod
    def record(self) -> dict[str, Any]:
        """Everything needed to build this trainer again (JSON-able)."""

    @property
    @abstractmethod
    def seed(self) -> int: ...

    @property
    def binary(self) -> bool:
        """Whether the trainer fits a two-class model (labels must hold both classes)."""
        return True

    def register_options(self, model: Any) -> dict[str, Any]:
        """Extra arguments for ``Registry.register`` (torch modules name their factory)."""
        return {}

    def code_files(self) -> list[str]:
        """Source files whose content shapes the fit: the trainer's own module and any user
        code it calls."""
        return [inspect.getfile(type(self))]

    def fingerprint(self) -> str:
        """SHA-256 of the code that fits the model (changes when that code changes)."""
        h = hashlib.sha256()
        for path in sorted(set(self.code_files())):
            h.update(path.rsplit("/", 1)[-1].encode())
            with open(path, "rb") as f:
                h.update(f.read())
        return h.hexdigest()


# -- gradient boosting --------------------------------------------------------------------
class _Booster(Trainer):
    """Boosting rounds in fixed chunks of ``checkpoint_rounds``; a checkpoint at each chunk's
    end, and on SIGTERM at the round reached when the settings are deterministic.

    Stochastic settings (bagging, feature sampling) draw from a generator inside the
    library that cannot be saved, so each chunk is seeded from (seed, chunk) in every run,
    interrupted or not, and a preempted stochastic run restarts its unfinished chunk.
    """

    def __init__(
        self,
        *,
        params: dict[str, Any] | None = None,
        seed: int = 0,
        threads: int = 1,
        checkpoint_rounds: int = 25,
    ) -> None:
        self.params = dict(params or {})
        self._seed = seed
        self.threads = threads
        self.checkpoint_rounds = checkpoint_rounds

    @property
    def seed(self) -> int:
        return self._seed

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "params": self.params,
            "seed": self._seed,
            "threads": self.threads,
            "checkpoint_rounds": self.checkpoint_rounds,
        }

    def _round_names(self) -> tuple[str, ...]:
        return self._round_keys

    @property
    def rounds(self) -> int:
        for key in self._round_names():
            if key in self.params:
                return int(self.params[key])
        return 100

    _round_keys: ClassVar[tuple[str, ...]] = ()

    def _check_common(self) -> None:
        if self.rounds < 1:
            raise ValidationError(f"{self.kind} trainer: the number of rounds must be >= 1")
        if self.checkpoint_rounds < 1:
            raise ValidationError(f"{self.kind} trainer: checkpoint_rounds must be >= 1")
        if self.threads < 1:
            raise ValidationError(f"{self.kind} trainer: threads must be >= 1")

    def fit(self, x: np.ndarray, y: np.ndarray, names: list[str], ctx: RunContext) -> Any:
        start = time.perf_counter()
        total = self.rounds
        cp = ctx.resume()
        state = None if cp is None else cp.payload
        done = 0 if cp is None else cp.step
        data = self._dataset(x, y, names)
        stochastic = self._stochastic()
        with ctx.preemption:
            while done < total:
                chunk = done // self.checkpoint_rounds
                end = min((chunk + 1) * self.checkpoint_rounds, total)
                model, reached = self._train(data, state, done, end, chunk, stochastic, ctx)
                if ctx.first_step_s is None:
                    ctx.first_step_s = time.perf_counter() - start
                if reached < end:  # stopped by SIGTERM mid-chunk
                    if not stochastic and reached > done:
                        ctx.save(reached, self._dump(model, total), {"rounds": reached})
                    raise Preempted(reached if not stochastic else done)
                state, done = self._dump(model, total), end
                ctx.report(done, total)
                if done < total:
                    ctx.save(done, state, {"rounds": done})
                    if ctx.preemption.requested:
                        raise Preempted(done)
        return self._load(state)

    @abstractmethod
    def _dataset(self, x: np.ndarray, y: np.ndarray, names: list[str]) -> Any: ...

    @abstractmethod
    def _stochastic(self) -> bool: ...

    @abstractmethod
    def _train(
        self,
        data: Any,
        state: bytes | None,
        done: int,
        end: int,
        chunk: int,
        stochastic: bool,
        ctx: RunContext,
    ) -> tuple[Any, int]: ...

    @abstractmethod
    def _dump(self, model: Any, total: int) -> bytes: ...

    @abstractmethod
    def _load(self, state: bytes | None) -> Any: ...


class LightGBM(_Booster):
    """LightGBM boosting (native parameter names or their aliases; ``num_iterations``,
    alias ``n_estimators``, sets the rounds). Deterministic by construction: fixed threads,
    ``deterministic`` and row-wise histograms, so the same data and seed give the same bytes.

    Example
    -------
    >>> LightGBM(params={"num_leaves": 7, "learnin_rate": 0.1}).validate()
    Traceback (most recent call last):
    ...
    keel.errors.ValidationError: lightgbm trainer: unknown parameter 'learnin_rate' — did you mean 'learning_rate'?...
    """  # noqa: E501

    kind = "lightgbm"
    format = "lightgbm"

    def _round_names(self) -> tuple[str, ...]:
        import lightgbm.basic

        # Every name LightGBM accepts for the number of rounds, from its own alias table.
        return tuple(sorted(lightgbm.basic._ConfigAliases.get("num_iterations")))

    def validate(self) -> None:
        import lightgbm.basic

        self._check_common()
        known = lightgbm.basic._ConfigAliases._get_all_param_aliases()
        names = {a for aliases in known.values() for a in aliases} | set(known)
        for key in self.params:
            if key not in names:
                raise ValidationError(
                    f"lightgbm trainer: unknown parameter {key!r}{did_you_mean(key, names)}; "
                    "see LightGBM's parameter list"
                )
        objective = str(self.params.get("objective", "binary"))
        if objective not in (
            "binary",
            "regression",
            "regression_l2",
            "l2",
            "regression_l1",
            "l1",
            "huber",
            "cross_entropy",
            "xentropy",
        ):
            raise ValidationError(
                f"lightgbm trainer: objective {objective!r} is not supported; use binary or "
                "a regression objective"
            )

    @property
    def binary(self) -> bool:
        return str(self.params.get("objective", "binary")) == "binary"

    def _base(self) -> dict[str, Any]:
        p = {k: v for k, v in self.params.items() if k not in self._round_names()}
        p.setdefault("objective", "binary")
        p.update(
            deterministic=True,
            force_row_wise=True,
            num_threads=self.threads,
            seed=self._seed,
            verbosity=-1,
        )
        return p

    def _stochastic(self) -> bool:
        p = self.params

        def below_one(*keys: str) -> bool:
            return any(float(p[k]) < 1.0 for k in keys if k in p)

        bagging = (
            below_one("bagging_fraction", "subsample", "sub_row", "bagging")
            and int(p.get("bagging_freq", p.get("subsample_freq", 0))) > 0
        )
        return (
            bagging
            or below_one(
                "feature_fraction",
                "colsample_bytree",
                "sub_feature",
                "feature_fraction_bynode",
                "colsample_bynode",
            )
            or bool(p.get("extra_trees", False))
        )

    def _dataset(self, x: np.ndarray, y: np.ndarray, names: list[str]) -> Any:
        return (x, y, names)

    def _train(
        self,
        data: Any,
        state: bytes | None,
        done: int,
        end: int,
        chunk: int,
        stochastic: bool,
        ctx: RunContext,
    ) -> tuple[Any, int]:
        import lightgbm

        x, y, names = data
        params = self._base()
        if stochastic:
            params.update(
                bagging_seed=self._seed * 1_000_003 + chunk,
                feature_fraction_seed=self._seed * 1_000_033 + chunk,
                extra_seed=self._seed * 1_000_037 + chunk,
            )
        # A fresh Dataset per chunk: the init model's scores are its starting point.
        dataset = lightgbm.Dataset(x, y, feature_name=names, free_raw_data=False)
        init = None if state is None else lightgbm.Booster(model_str=state.decode())

        stopped: list[int] = []

        def stop_on_sigterm(env: Any) -> None:
            if ctx.preemption.requested and env.iteration + 1 < env.end_iteration:
                stopped.append(env.iteration)
                raise lightgbm.callback.EarlyStopException(env.iteration, [])

        booster = lightgbm.train(
            params,
            dataset,
            num_boost_round=end - done,
            init_model=init,
            keep_training_booster=True,
            callbacks=[stop_on_sigterm],
        )
        # LightGBM also ends early on its own when no leaf can be split further (one class in
        # the chunk's data, say): that is a finished chunk, not a preemption.
        return booster, booster.current_iteration() if stopped else end

    def _dump(self, model: Any, total: int) -> bytes:
        # The parameters section names the rounds of the last call: record the run's total,
        # so an interrupted run and an uninterrupted one write the same bytes.
        model.reset_parameter({"num_iterations": total})
        return model.model_to_string(num_iteration=-1).encode()

    def _load(self, state: bytes | None) -> Any:
        import lightgbm

        if state is None:
            raise ValidationError("lightgbm trainer: nothing was trained (0 rounds)")
        return lightgbm.Booster(model_str=state.decode())

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict(x, num_threads=self.threads), dtype=np.float64)

    def effective_params(self, model: Any) -> dict[str, Any]:
        """Every parameter as the fitted model records it (defaults included)."""
        text = model.model_to_string(num_iteration=-1)
        section = text.split("\nparameters:\n", 1)[-1].split("\nend of parameters", 1)[0]
        out: dict[str, Any] = {}
        for line in section.splitlines():
            if line.startswith("[") and ": " in line:
                key, value = line[1:-1].split(": ", 1)
                out[key] = _number(value)
        out["num_trees"] = model.num_trees()
        return out


class XGBoost(_Booster):
    """XGBoost boosting (``n_estimators``/``num_boost_round`` sets the rounds; other keys are
    booster parameters). Exact training continuation is XGBoost's own: the JSON model holds
    everything a further round needs."""

    kind = "xgboost"
    format = "xgboost"
    _round_keys = ("n_estimators", "num_boost_round")

    def validate(self) -> None:
        import xgboost

        self._check_common()
        known = set(xgboost.XGBClassifier().get_params()) | {
            "eta",
            "lambda",
            "alpha",
            "gamma",
            "max_bin",
            "tree_method",
            "objective",
            "eval_metric",
            "base_score",
            "min_child_weight",
            "max_delta_step",
        } - {"n_jobs", "random_state", "missing", "callbacks", "early_stopping_rounds"}
        for key in self.params:
            if key not in known:
                raise ValidationError(
                    f"xgboost trainer: unknown parameter {key!r}{did_you_mean(key, known)}"
                )

    @property
    def binary(self) -> bool:
        return str(self.params.get("objective", "binary:logistic")).startswith("binary:")

    def _stochastic(self) -> bool:
        p = self.params
        return any(
            float(p[k]) < 1.0
            for k in ("subsample", "colsample_bytree", "colsample_bylevel", "colsample_bynode")
            if k in p
        )

    def _base(self, chunk: int, stochastic: bool) -> dict[str, Any]:
        p = {k: v for k, v in self.params.items() if k not in self._round_names()}
        aliases = {"learning_rate": "eta", "reg_lambda": "lambda", "reg_alpha": "alpha"}
        p = {aliases.get(k, k): v for k, v in p.items()}
        p.setdefault("objective", "binary:logistic")
        p.setdefault("tree_method", "hist")
        p.update(nthread=self.threads, seed=self._seed + (chunk if stochastic else 0))
        return p

    def _dataset(self, x: np.ndarray, y: np.ndarray, names: list[str]) -> Any:
        import xgboost

        return xgboost.DMatrix(x, y, feature_names=names, nthread=self.threads)

    def _train(
        self,
        data: Any,
        state: bytes | None,
        done: int,
        end: int,
        chunk: int,
        stochastic: bool,
        ctx: RunContext,
    ) -> tuple[Any, int]:
        import xgboost

        booster = xgboost.Booster(self._base(chunk, stochastic), [data])
        if state is not None:
            booster.load_model(bytearray(state))
            booster.set_param(self._base(chunk, stochastic))
        reached = done
        for i in range(done, end):
            booster.update(data, i)
            reached = i + 1
            if ctx.preemption.requested and reached < end:
                break
        return booster, reached

    def _dump(self, model: Any, total: int) -> bytes:
        return bytes(model.save_raw("json"))

    def _load(self, state: bytes | None) -> Any:
        import xgboost

        if state is None:
            raise ValidationError("xgboost trainer: nothing was trained (0 rounds)")
        booster = xgboost.Booster()
        booster.load_model(bytearray(state))
        return booster

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        import xgboost

        dm = xgboost.DMatrix(x, feature_names=model.feature_names, nthread=self.threads)
        return np.asarray(model.predict(dm), dtype=np.float64)

    def effective_params(self, model: Any) -> dict[str, Any]:
        import json

        config = json.loads(model.save_config())
        learner = config["learner"]
        out: dict[str, Any] = {"objective": learner["objective"]["name"]}
        out.update(
            {
                k: _number(v)
                for k, v in learner["gradient_booster"]
                .get("tree_train_param", learner["gradient_booster"].get("updater", {}))
                .items()
                if isinstance(v, str)
            }
        )
        out.update({k: _number(v) for k, v in learner["generic_param"].items()})
        out["num_boosted_rounds"] = model.num_boosted_rounds()
        return out


# -- scikit-learn -----------------------------------------------------------------------
class Sklearn(Trainer):
    """Any scikit-learn estimator, named by import path (``"sklearn.linear_model:
    LogisticRegression"``) with its parameters. Fitted in one call: no checkpoints.

    Example
    -------
    >>> Sklearn("sklearn.linear_model:LogisticRegression", params={"C": 1.0, "penality": "l2"}
    ...         ).validate()
    Traceback (most recent call last):
    ...
    keel.errors.ValidationError: sklearn trainer sklearn.linear_model:LogisticRegression: unknown parameter 'penality' — did you mean 'penalty'?...
    """  # noqa: E501

    kind = "sklearn"
    format = "sklearn"

    def __init__(
        self, estimator: str, *, params: dict[str, Any] | None = None, seed: int = 0
    ) -> None:
        self.estimator = estimator
        self.params = dict(params or {})
        self._seed = seed

    @property
    def seed(self) -> int:
        return self._seed

    def _class(self) -> Any:
        return _import(self.estimator, "sklearn trainer")

    def _build(self) -> Any:
        est = self._class()(**self.params)
        if "random_state" in est.get_params() and "random_state" not in self.params:
            est.set_params(random_state=self._seed)
        return est

    def validate(self) -> None:
        cls = self._class()
        known = set(cls().get_params())
        for key in self.params:
            if key not in known:
                raise ValidationError(
                    f"sklearn trainer {self.estimator}: unknown parameter {key!r}"
                    f"{did_you_mean(key, known)}; it accepts {', '.join(sorted(known))}"
                )

    @property
    def binary(self) -> bool:
        return hasattr(self._class(), "predict_proba")

    def fit(self, x: np.ndarray, y: np.ndarray, names: list[str], ctx: RunContext) -> Any:
        import pandas as pd

        start = time.perf_counter()
        model = self._build().fit(pd.DataFrame(x, columns=names), y)
        ctx.first_step_s = time.perf_counter() - start
        ctx.report(1, 1)
        return model

    def predict(self, model: Any, x: np.ndarray) -> np.ndarray:
        import pandas as pd

        frame = pd.DataFrame(x, columns=list(model.feature_names_in_))
        if hasattr(model, "predict_proba"):
            return np.asarray(model.predict_proba(frame))[:, -1].astype(np.float64)
        return np.asarray(model.predict(frame), dtype=np.float64)

    def effective_params(self, model: Any) -> dict[str, Any]:
        return {k: v for k, v in model.get_params().items() if _plain(v)}

    def record(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "estimator": self.estimator,
            "params": self.params,
            "seed": self._seed,
        }

    def code_files(self) -> list[str]:
        return [*super().code_files(), inspect.getfile(self._class())]


def _import(target: str, what: str) -> Any:
    return import_object(target, what)


def _number(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            continue
    return value


def _plain(v: Any) -> bool:
    return v is None or isinstance(v, bool | int | float | str)


TRAINERS: dict[str, Callable[..., Trainer]] = {
    "lightgbm": LightGBM,
    "xgboost": XGBoost,
    "sklearn": Sklearn,
}


def trainer_from_record(record: dict[str, Any]) -> Trainer:
    """The trainer a lineage record describes (``Trainer.record()``'s output)."""
    kind = record.get("kind")
    if kind == "torch":
        from keel.training.torch_trainer import Torch

        return Torch.from_record(record)
    if kind not in TRAINERS:
        raise ValidationError(
            f"lineage names trainer {kind!r}, which this Keel does not know; known: "
            f"{', '.join([*TRAINERS, 'torch'])}"
        )
    rest = {k: v for k, v in record.items() if k != "kind"}
    return TRAINERS[kind](**rest)
