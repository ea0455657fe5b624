"""The recommender: full training, fine-tunes that move only the embedding rows their
interactions touch, collisionless tables, exact resume, and the precision check."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch

from keel.errors import ValidationError
from keel.index import IndexStore
from keel.log import Log, open_log
from keel.recommend import (
    FineTune,
    InconsistentVersion,
    NothingNew,
    Recommender,
    fine_tune,
    train_recommender,
)
from keel.recommend.model import SPARSE, TwoTower
from keel.recommend.run import FACTORY
from keel.recommend.tables import COLD, FREE, IdRows
from keel.recommend.train import RowAdagrad, dense_digest, precision_check, run_loop, top_k
from keel.registry import Registry
from keel.shop import TOPICS, Shop
from keel.training.checkpoint import Preempted, Preemption
from keel.training.trainers import RunContext


@dataclass
class World:
    log: Log
    registry: Registry
    indexes: IndexStore
    shop: Shop
    tmp: Path
    rec: Recommender

    def stream(self, minutes: float) -> int:
        rate = self.shop.n_users * 2 * 6.7 / 86_400
        n = 0
        for tick in self.shop.stream(rate=rate, tick_s=minutes * 60, duration_s=minutes * 60):
            self.log.append("shop.events", tick["shop.events"])
            n += tick["shop.events"].num_rows
        return n

    def kw(self) -> dict:
        return dict(log=self.log, features=None, registry=self.registry, indexes=self.indexes)


@pytest.fixture
def world(tmp_path: Path) -> World:
    log = open_log(f"sqlite:///{tmp_path}/log.db")
    for t in TOPICS:
        log.create_topic(t)
    shop = Shop(seed=5, n_users=600, n_items=300, sessions_per_user_day=2.0)
    for name, table in shop.catalog().items():
        log.append(name, table)
    log.append("shop.events", shop.history(days=2)["shop.events"])
    registry = Registry(f"sqlite:///{tmp_path}/reg.db", str(tmp_path / "artifacts"))
    rec = Recommender(
        "recommend",
        window=timedelta(days=2),
        holdout=timedelta(hours=6),
        epochs=2,
        dim=16,
        hidden=32,
        fine_tune=FineTune(min_count=2, checkpoint_every_steps=2, expire_after=timedelta(days=30)),
    )
    return World(log, registry, IndexStore(tmp_path / "indexes"), shop, tmp_path, rec)


def _trained(world: World) -> int:
    r = train_recommender(world.rec, **world.kw(), until=world.shop.now, alias="champion")
    return r.version.version


def _state(registry: Registry, version: int) -> dict[str, torch.Tensor]:
    return registry.load("recommend", version).state_dict()


def test_ids_get_their_own_rows_after_min_count_and_lose_them_when_stale() -> None:
    t = IdRows.empty()
    got = t.observe(np.array([5, 5, 6, 7, 7, 7]), np.array([1, 2, 3, 4, 5, 6]), min_count=2)
    assert sorted(got.ids.tolist()) == [5, 7]
    rows = t.rows(np.array([5, 6, 7, 8]))
    assert rows[1] == 0 and rows[3] == 0  # 6 seen once, 8 never: the cold-start row
    assert rows[0] != rows[2] and min(rows[0], rows[2]) > 0  # no two IDs share a row
    assert t.ids[0] == COLD
    t.observe(np.array([6]), np.array([10]), min_count=2)  # 6's second sighting
    assert t.rows(np.array([6]))[0] > 0
    freed = t.expire(now_us=12, after_us=5)  # unseen since 7: 5 (seen at 2) and 7 (at 6)
    assert sorted(t.ids[freed].tolist()) == [FREE, FREE]
    assert t.rows(np.array([5, 7])).tolist() == [0, 0] and t.rows(np.array([6]))[0] > 0
    again = t.observe(np.array([9, 9]), np.array([20, 21]), min_count=2)
    assert again.rows[0] in freed  # a freed row is reused, the table does not grow
    assert len(t) == 4


def test_full_training_learns_the_shop_and_publishes_an_index(world: World) -> None:
    r = train_recommender(world.rec, **world.kw(), until=world.shop.now, alias="champion")
    hit = r.metrics["hit_rate@10"]
    # 10 of 300 items at random would hit 3% of purchases.
    assert r.metrics["purchases"] >= 20 and hit > 0.12, r.metrics
    lineage = world.registry.lineage("recommend", r.version.version)["training"]
    assert lineage["mode"] == "full" and lineage["interactions"]["rows"] == len(r.data)
    assert world.indexes.versions("recommend") == [r.version.version]
    # The index answers users' queries as exact search over the version's items does.
    model = world.registry.load("recommend", r.version.version)
    index = world.indexes.open("recommend", r.version.version)
    assert len(index) == len(model.items.live)
    users = np.unique(r.data.users)[:100]
    exact, _ = top_k(model, users, None, 10)
    got = index.search(model.query(users, None), k=10).keys
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact, strict=True)])
    assert overlap >= 0.95


def test_a_fine_tune_moves_only_the_rows_its_interactions_touch(world: World) -> None:
    parent = _trained(world)
    world.stream(40)
    ft = fine_tune(world.rec, **world.kw(), parent=parent)
    before, after = _state(world.registry, parent), _state(world.registry, ft.version.version)
    # Every dense tensor is byte-identical.
    for name, t in before.items():
        if name in SPARSE or name.startswith(("user_", "item_")):
            continue
        assert hashlib.sha256(after[name].numpy().tobytes()).hexdigest() == (
            hashlib.sha256(t.numpy().tobytes()).hexdigest()
        ), name
    lineage = world.registry.lineage("recommend", ft.version.version)["training"]
    assert (
        lineage["dense_sha256"]
        == world.registry.lineage("recommend", parent)["training"]["dense_sha256"]
    )
    # Rows of users and items the window does not mention are unchanged.
    child = world.registry.load("recommend", ft.version.version)
    old = world.registry.load("recommend", parent)
    seen_users = set(ft.data.users.tolist())
    kept = [u for u in old.users.ids[old.users.live].tolist() if u not in seen_users]
    assert kept
    a = old.user_table[torch.as_tensor(old.users.rows(np.array(kept)))]
    b = child.user_table[torch.as_tensor(child.users.rows(np.array(kept)))]
    assert torch.equal(a, b)
    moved = [u for u in seen_users if old.users.rows(np.array([u]))[0] > 0]
    ra = old.user_table[torch.as_tensor(old.users.rows(np.array(moved)))]
    rb = child.user_table[torch.as_tensor(child.users.rows(np.array(moved)))]
    assert not torch.equal(ra, rb)
    seen_items = set(ft.data.items.tolist())
    untouched = [i for i in old.items.ids[old.items.live].tolist() if i not in seen_items]
    ia = old.item_table[torch.as_tensor(old.items.rows(np.array(untouched)))]
    ib = child.item_table[torch.as_tensor(child.items.rows(np.array(untouched)))]
    assert torch.equal(ia, ib)
    # Lineage: the parent, the offsets since the parent's end, rows touched, steps.
    parent_to = world.registry.lineage("recommend", parent)["training"]["interactions"]["to"]
    assert lineage["parent"] == parent and ft.version.parent_version == parent
    assert lineage["interactions"]["from"] == parent_to
    rows_of_seen = set(child.users.rows(np.array(sorted(seen_users))).tolist())
    assert lineage["rows_touched"]["users"] == len(rows_of_seen)
    assert lineage["steps"] == ft.steps > 0
    assert world.registry.aliases("recommend")["challenger"] == ft.version.version
    assert ft.version.version in world.indexes.versions("recommend")
    # The next fine-tune reads on from where this one stopped.
    world.stream(20)
    ft2 = fine_tune(world.rec, **world.kw(), parent=ft.version.version)
    assert ft2.data.start == {int(p): o for p, o in lineage["interactions"]["to"].items()}


def test_the_fine_tune_optimizer_holds_state_for_the_tables_only(world: World) -> None:
    parent = _trained(world)
    world.stream(30)
    model: TwoTower = world.registry.load("recommend", parent)
    from keel.recommend.data import read_interactions

    lineage = world.registry.lineage("recommend", parent)["training"]
    start = {int(p): o for p, o in lineage["interactions"]["to"].items()}
    end = dict(enumerate(world.log.end_offsets("shop.events")))
    data = read_interactions(world.rec, world.log, None, start, end)
    seen: list[RowAdagrad] = []
    original = RowAdagrad.__init__

    def spy(self: RowAdagrad, *a: object, **k: object) -> None:
        original(self, *a, **k)  # type: ignore[arg-type]
        seen.append(self)

    RowAdagrad.__init__ = spy  # type: ignore[method-assign]
    try:
        run_loop(model, data, epochs=1, batch_size=64, lr=0.05, negatives=2, seed=1,
                 ctx=RunContext(), dense_lr=None)  # fmt: skip
    finally:
        RowAdagrad.__init__ = original  # type: ignore[method-assign]
    assert seen and set(seen[0].state) == set(SPARSE)
    assert not any(p.requires_grad for p in model.dense_parameters().values())
    assert all(p.grad is None for p in model.parameters())  # nothing accumulated anywhere


def test_new_ids_get_rows_once_seen_min_count_times(world: World) -> None:
    parent = _trained(world)
    items = world.shop.launch(5, "games")["shop.items"]
    world.log.append("shop.items", items)
    new_ids = set(items.column("item_id").to_pylist())
    world.stream(240)
    ft = fine_tune(world.rec, **world.kw(), parent=parent)
    child = world.registry.load("recommend", ft.version.version)
    counts = {i: int((ft.data.items == i).sum()) for i in new_ids}
    for item, n in counts.items():
        has_row = child.items.rows(np.array([item]))[0] > 0
        assert has_row == (n >= 2), (item, n)
    assert any(n >= 2 for n in counts.values())
    assert ft.admitted["items"] >= sum(n >= 2 for n in counts.values())
    # A launched item with a row is in the child's index, not in the parent's.
    got = [i for i, n in counts.items() if n >= 2]
    index = world.indexes.open("recommend", ft.version.version)
    assert len(index) == len(child.items.live)
    assert index._index.contains(np.array(got, dtype=np.uint64)).all()
    before = world.indexes.open("recommend", parent)
    assert not before._index.contains(np.array(got, dtype=np.uint64)).any()


def test_stale_rows_expire(world: World) -> None:
    parent = _trained(world)
    world.stream(30)
    short = dataclasses.replace(
        world.rec,
        fine_tune=dataclasses.replace(world.rec.fine_tune, expire_after=timedelta(hours=3)),
    )
    ft = fine_tune(short, **world.kw(), parent=parent)
    child = world.registry.load("recommend", ft.version.version)
    latest = int(ft.data.ts.max())
    live = child.users.live
    assert ft.expired["users"] > 0
    assert (child.users.seen[live] >= latest - 3 * 3600 * 10**6).all()


def test_a_preempted_fine_tune_resumes_to_the_same_bytes(world: World) -> None:
    parent = _trained(world)
    world.stream(60)
    whole = fine_tune(world.rec, **world.kw(), parent=parent, shadow=False)
    versions = len(world.registry.versions("recommend"))
    stop = Preemption()

    def progress(phase: str, done: int, total: int) -> None:
        if phase == "fit" and done == 3:
            stop.request()

    ckpt = world.tmp / "ckpt"
    with pytest.raises(Preempted):
        fine_tune(world.rec, **world.kw(), parent=parent, shadow=False, checkpoint_dir=ckpt,
                  preemption=stop, progress=progress)  # fmt: skip
    assert len(world.registry.versions("recommend")) == versions  # nothing registered
    resumed = fine_tune(world.rec, **world.kw(), parent=parent, shadow=False, checkpoint_dir=ckpt)
    assert resumed.resumed_from == 3
    a, b = (
        _state(world.registry, whole.version.version),
        _state(world.registry, resumed.version.version),
    )
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def test_served_precision_must_agree_with_float32(world: World) -> None:
    parent = _trained(world)
    world.stream(30)
    bf16 = dataclasses.replace(
        world.rec, fine_tune=dataclasses.replace(world.rec.fine_tune, precision="bfloat16")
    )
    ok = fine_tune(bf16, **world.kw(), parent=parent)
    assert ok.precision is not None and ok.precision["max_score_diff"] <= 0.05
    # A version whose item biases drifted far from zero: float32 ranks as before, but
    # bfloat16 (8 bits of mantissa) can no longer tell the scores apart.
    model = world.registry.load("recommend", parent)
    with torch.no_grad():
        model.item_table[:, -1] += 4096.0
    lineage = world.registry.lineage("recommend", parent)["training"]
    bad = world.registry.register(
        "recommend", model, format="torch", factory=FACTORY, init_kwargs=model.init_kwargs(),
        training=lineage, parent=parent,
    )  # fmt: skip
    users = np.unique(ok.data.users)[:50]
    check = precision_check(model, users, None, "bfloat16")
    assert check["max_score_diff"] > 0.05
    versions = len(world.registry.versions("recommend"))
    with pytest.raises(InconsistentVersion, match="bfloat16"):
        fine_tune(bf16, **world.kw(), parent=bad.version)
    assert len(world.registry.versions("recommend")) == versions
    # The same version served in float32 needs no check and is accepted.
    assert fine_tune(world.rec, **world.kw(), parent=bad.version).precision is None


def test_bad_declarations_name_what_is_wrong() -> None:
    with pytest.raises(ValidationError, match="dim must be a positive integer"):
        Recommender("r", dim=0)
    with pytest.raises(ValidationError, match="precision 'fp8'"):
        FineTune(precision="fp8")
    with pytest.raises(ValidationError, match="holdout must be positive and shorter"):
        Recommender("r", window=timedelta(hours=1), holdout=timedelta(hours=2))


def test_a_topic_without_the_columns_is_refused(world: World) -> None:
    rec = Recommender("r", interactions="shop.payments")
    with pytest.raises(ValidationError, match="has no column 'item_id'"):
        train_recommender(rec, **world.kw(), until=world.shop.now)


def test_dense_digest_ignores_the_tables(world: World) -> None:
    parent = _trained(world)
    model = world.registry.load("recommend", parent)
    before = dense_digest(model)
    with torch.no_grad():
        model.user_table += 1.0
    assert dense_digest(model) == before
    with torch.no_grad():
        model.item_proj.weight += 1.0
    assert dense_digest(model) != before


def test_nothing_logged_since_the_parent_registers_nothing(world: World) -> None:
    parent = _trained(world)
    first = fine_tune(world.rec, **world.kw(), parent=parent)  # the holdout part, unseen
    versions = len(world.registry.versions("recommend"))
    with pytest.raises(NothingNew, match="no interactions"):
        fine_tune(world.rec, **world.kw(), parent=first.version.version)
    assert len(world.registry.versions("recommend")) == versions
