"""eptk.stats without a model: the streaming Gaussian against torch's mean and covariance, the reservoir's
Algorithm R and its merge, the per-layer view priors read, and the statistics folder's format and refusals.
(tests/test_capture.py covers the same objects filled by real captures.)"""
import json

import pytest
import torch

from eptk import linalg
from eptk.errors import EptkUsageError
from eptk.stats import (EXCLUDED, FORMAT, META_FILE, STATS_FILE, ActivationStats, Reservoir, RunningGaussian,
                        check_model, is_stats_folder, layer_activations)
from eptk.version import __version__


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rows(n, d=5, seed=0, offset=3.0):
    return torch.randn(n, d, generator=gen(seed), dtype=torch.float64) * torch.arange(1.0, d + 1) + offset


def test_running_gaussian_by_sums_by_rows_and_merged_is_torch_cov():
    x = rows(37)
    whole = torch.cov(x.T)
    by_sums, by_rows, a, b = (RunningGaussian(5) for _ in range(4))
    for chunk in x.split(8):
        by_sums.update(chunk.shape[0], chunk.sum(0), chunk.T @ chunk)
        by_rows.add(chunk.float())
    a.add(x[:11])
    b.add(x[11:])
    merged = a.merge(b)
    for g in (by_sums, by_rows, merged):
        assert g.count == 37.0
        torch.testing.assert_close(g.mean, x.mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.covariance(), whole, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged.covariance(), whole, rtol=1e-12, atol=1e-12)  # float64 rows: exact
    assert merged.covariance().dtype == torch.float64


def test_running_gaussian_edges():
    g = RunningGaussian(3)
    g.update(0, torch.zeros(3), torch.zeros(3, 3))
    g.add(torch.zeros(0, 3))
    assert g.count == 0 and torch.equal(g.mean, torch.zeros(3, dtype=torch.float64))
    g.add(torch.tensor([[1.0, 2.0, 3.0]]))
    assert g.count == 1 and torch.equal(g.covariance(), torch.zeros(3, 3, dtype=torch.float64))  # n − 1 = 0
    g.add(torch.tensor([[3.0, 2.0, 1.0]]))
    torch.testing.assert_close(g.covariance(), torch.cov(torch.tensor([[1.0, 2, 3], [3, 2, 1]]).T).double())
    with pytest.raises(ValueError) as refused:
        g.merge(RunningGaussian(4))
    assert str(refused.value) == "cannot merge Gaussians of width 4 and 3"
    assert g.device.type == "cpu" and g.cpu() is g


def test_running_gaussian_merges_float32_rows_in_float64():
    """Rows given in float32 are centred and multiplied in float64: the covariance of the float32 values exactly
    (a float32 scatter would be off by float32's rounding, ~1e-7 relative)."""
    x = rows(37, offset=100.0).float()
    g = RunningGaussian(5).add(x)
    torch.testing.assert_close(g.covariance(), torch.cov(x.double().T), rtol=1e-12, atol=1e-12)


def test_state_follows_the_first_batch_onto_its_device():
    """A Gaussian and a reservoir live on the device of their first rows, and later rows or Gaussians from another
    device are moved there (meta tensors stand for a GPU: torch refuses to mix them with CPU tensors)."""
    meta = torch.zeros(4, 3, device="meta")
    g = RunningGaussian(3).add(meta).add(torch.ones(2, 3))
    g.merge(RunningGaussian(3).add(torch.ones(5, 3)))
    empty = RunningGaussian(3).merge(RunningGaussian(3).add(meta))
    for gaussian in (g, empty):
        assert {t.device.type for t in (gaussian._count, gaussian.mean, gaussian.m2)} == {"meta"}
    r = Reservoir(4, 3)
    r.add(meta)
    r.add(torch.ones(5, 3))
    assert r.rows.device.type == "meta" and r.seen == 9
    by_index = Reservoir(4, 3)                 # a capture's real-token rows, their positions found on the device
    by_index.add_from(torch.zeros(2, 3, 3, device="meta"), index=torch.arange(5, device="meta"))
    assert by_index.rows.device.type == "meta" and by_index.seen == 5


def test_running_gaussian_from_moments_round_trip():
    x = rows(20)
    g = RunningGaussian(5).add(x)
    back = RunningGaussian.from_moments(g.count, g.mean.float(), g.covariance().float())
    assert back.count == 20.0 and back.dim == 5 and back.mean.dtype == torch.float64
    torch.testing.assert_close(back.covariance(), g.covariance(), rtol=1e-6, atol=1e-6)
    one = RunningGaussian.from_moments(1, torch.ones(5), torch.eye(5))
    torch.testing.assert_close(one.m2, torch.eye(5, dtype=torch.float64))  # count 1: the scatter is the cov
    empty = RunningGaussian.from_moments(0, torch.ones(5), torch.eye(5))
    assert empty.count == 0 and torch.equal(empty.m2, torch.zeros(5, 5, dtype=torch.float64))
    back.add(x)  # a loaded Gaussian keeps merging
    assert back.count == 40.0
    big = 2 ** 24 + 1  # a capture's token count beyond float32's integers stays exact (float64)
    assert RunningGaussian.from_moments(big, torch.ones(5), torch.eye(5)).count == big


def test_reservoir_keeps_the_first_rows_then_a_seeded_uniform_sample():
    stream = torch.arange(100.0)[:, None]
    r = Reservoir(10, 1, seed=3)
    r.add(stream[:7])
    assert r.seen == 7 and r.samples[:, 0].tolist() == list(range(7))   # below capacity: every row, in order
    r.add(stream[7:])
    assert r.seen == 100 and r.samples.shape == (10, 1) and len(set(r.samples[:, 0].tolist())) == 10
    again = Reservoir(10, 1, seed=3)
    for chunk in stream.split(13):  # the same stream in other chunks: the same sample
        again.add(chunk)
    assert torch.equal(again.samples, r.samples)
    counts = torch.zeros(100)
    for seed in range(300):
        s = Reservoir(10, 1, seed=seed)
        s.add(stream)
        counts[s.samples[:, 0].long()] += 1
    assert counts.sum() == 3000 and 10 < counts.min() and counts.max() < 55  # each row kept ~30 times in 300


def test_reservoir_add_from_masks_and_indexes():
    hidden = torch.arange(24.0).reshape(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    a, b = Reservoir(10, 3), Reservoir(10, 3)
    a.add_from(hidden, mask)
    b.add_from(hidden, index=torch.nonzero(mask.reshape(-1)).squeeze(1))
    want = hidden.reshape(-1, 3)[[0, 1, 5, 6, 7]]
    assert torch.equal(a.samples, want) and torch.equal(b.samples, want) and a.seen == 5
    empty = Reservoir(0, 3)
    empty.add(hidden)
    assert empty.seen == 8 and empty.samples.shape == (0, 3)


def test_reservoir_merge_is_a_sample_of_both_streams():
    a, b = Reservoir(6, 1, seed=1), Reservoir(6, 1, seed=2)
    a.add(torch.arange(0.0, 4.0)[:, None])
    b.add(torch.arange(100.0, 103.0)[:, None])
    a.merge(b)
    assert a.seen == 7
    assert a.samples.shape == (6, 1) and set(a.samples[:, 0].tolist()) <= {0, 1, 2, 3, 100, 101, 102}
    small = Reservoir(10, 1)
    small.add(torch.ones(2, 1))
    other = Reservoir(10, 1)
    other.add(torch.full((3, 1), 2.0))
    small.merge(other)
    assert small.seen == 5 and sorted(small.samples[:, 0].tolist()) == [1, 1, 2, 2, 2]  # room for all
    with pytest.raises(ValueError) as refused:
        small.merge(Reservoir(10, 2))
    assert str(refused.value) == "cannot merge reservoirs of width 2 and 1"
    shares = []
    for seed in range(200):  # a stream 3x longer supplies 3/4 of the merged sample
        x, y = Reservoir(8, 1, seed=seed), Reservoir(8, 1, seed=seed + 1000)
        x.add(torch.zeros(30, 1))
        y.add(torch.ones(90, 1))
        shares.append(float(x.merge(y).samples.mean()))
    assert sum(shares) / len(shares) == pytest.approx(0.75, abs=0.04)


def test_reservoir_merge_draws_from_its_own_generator_in_float64():
    """The merge's draws, made again by hand from a copy of the reservoir's generator: each sample permuted, then
    one float64 uniform per slot taking a row of a with probability (a's rows left) / (rows of both left). The
    global generator is reseeded differently before each merge: a merge that drew from it would differ."""
    def streams():
        a, b = Reservoir(6, 1, seed=4), Reservoir(6, 1, seed=5)
        a.add(torch.arange(40.0)[:, None])
        b.add(torch.arange(100.0, 140.0)[:, None])
        return a, b

    a, b = streams()
    g = torch.Generator()
    g.set_state(a.generator.get_state())
    mine, theirs = a.samples[torch.randperm(6, generator=g)], b.samples[torch.randperm(6, generator=g)]
    left_a, left_b, picked = 40, 40, []
    for draw in torch.rand(6, generator=g, dtype=torch.float64).tolist():
        if draw * (left_a + left_b) < left_a:
            picked.append(mine[40 - left_a]); left_a -= 1
        else:
            picked.append(theirs[40 - left_b]); left_b -= 1
    assert min(40 - left_a, 40 - left_b) >= 2  # each stream supplies several rows: a wrong index would show
    for global_seed in (0, 1):
        a, b = streams()
        torch.manual_seed(global_seed)
        assert torch.equal(a.merge(b).samples, torch.stack(picked)) and a.seen == 80


def test_layer_activations_shrink_when_there_are_few_tokens():
    many, few = RunningGaussian(5).add(rows(40)), RunningGaussian(5).add(rows(4))
    for g, shrunk_cov in ((many, False), (few, True)):
        res = Reservoir(16, 5)
        res.add(rows(40)[:16])
        view = layer_activations(3, g, res)
        delta = linalg.covariance_shrinkage(g.covariance(), g.count, g.mean, res.samples)
        assert view.layer == 3 and view.dim == 5 and view.count == g.count and view.shrinkage == delta
        torch.testing.assert_close(view.shrunk_cov, linalg.shrink(g.covariance(), delta).float())
        torch.testing.assert_close(view.cov, (view.shrunk_cov if shrunk_cov else g.covariance().float()))
        assert view.mean.dtype == torch.float32 and view.pooled is None and view.max_mahalanobis is None
    tril = view.scale_tril()
    assert tril is view.scale_tril() and tril.dtype == torch.float32
    x = rows(6).float()
    torch.testing.assert_close(view.mahalanobis(x), linalg.mahalanobis(x, tril, view.mean))


def filled(layers=(0, 2), d=5, samples=8, seed=0):
    stats = ActivationStats(d, list(layers), samples, seed=seed, meta={"model": "tiny", "task": "arith"})
    for l in layers:
        x = rows(20, d, seed=l + 10 * seed)
        stats.gaussians[l].add(x)
        stats.reservoirs[l].add(x)
        stats.pooled_parts[l].append(x[:3].float())
    return stats


def test_activation_stats_layers_have_their_own_reservoir_streams():
    stats = ActivationStats(5, [4, 0, 2], 8, seed=1)
    assert stats.layers == [0, 2, 4]
    x = rows(30)
    for l in stats.layers:
        stats.reservoirs[l].add(x)
    assert not torch.equal(stats.reservoirs[0].samples, stats.reservoirs[2].samples)
    alone = ActivationStats(5, [2], 8, seed=1)
    alone.reservoirs[2].add(x)
    assert torch.equal(alone.reservoirs[2].samples, stats.reservoirs[2].samples)  # not shifted by other layers
    with pytest.raises(EptkUsageError) as refused:
        stats.layer(3)
    assert str(refused.value) == "no statistics for layer 3; captured layers: 0, 2, 4"
    assert stats.pooled(0).shape == (0, 5)


def test_activation_stats_merge():
    a, b = filled(seed=0), filled(seed=1)
    a.max_mahalanobis[0] = 3.0
    before = a.layer(0)
    a.merge(b)
    assert a.gaussians[0].count == 40 and a.pooled(0).shape == (6, 5) and a.max_mahalanobis == {}
    assert a.layer(0) is not before and a.layer(0).count == 40
    for other in (filled(layers=(0,)), filled(d=4)):
        with pytest.raises(ValueError) as refused:
            a.merge(other)
        assert str(refused.value) == "cannot merge statistics of different widths or layers"


def test_save_and_load_round_trip(tmp_path):
    stats = filled()
    stats.max_mahalanobis[2] = 7.5
    stats.save(tmp_path / "s")
    assert is_stats_folder(tmp_path / "s") and not is_stats_folder(tmp_path)
    for name in (STATS_FILE, META_FILE):  # one of the two files alone is not a statistics folder
        (tmp_path / "half" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "half" / name).write_bytes((tmp_path / "s" / name).read_bytes())
        assert not is_stats_folder(tmp_path / "half")
        (tmp_path / "half" / name).unlink()
    meta = json.loads((tmp_path / "s" / META_FILE).read_text())
    assert meta["format"] == FORMAT and meta["hidden_size"] == 5 and meta["layers"] == [0, 2]
    assert meta["eptk_version"] == __version__ and meta["excluded"] == EXCLUDED and meta["tokens"] == {"0": 20.0, "2": 20.0} and meta["model"] == "tiny"
    from safetensors.torch import load_file
    saved = load_file(str(tmp_path / "s" / STATS_FILE))  # the format's dtypes: float64 count and distance, int64 seen
    assert (saved["layer0.count"].dtype, saved["layer0.seen"].dtype, saved["layer2.max_mahalanobis"].dtype) == \
        (torch.float64, torch.int64, torch.float64)
    back = ActivationStats.load(tmp_path / "s", model_name="tiny", hidden_size=5)
    assert back.layers == [0, 2] and back.dim == 5 and back.max_mahalanobis == {2: 7.5}
    for l in (0, 2):
        torch.testing.assert_close(back.gaussians[l].mean.float(), stats.gaussians[l].mean.float())
        torch.testing.assert_close(back.gaussians[l].covariance().float(), stats.gaussians[l].covariance().float())
        assert torch.equal(back.reservoirs[l].samples, stats.reservoirs[l].samples)
        assert back.reservoirs[l].seen == 20 and torch.equal(back.pooled(l), stats.pooled(l))
    assert back.layer(2).max_mahalanobis == 7.5 and back.layer(0).max_mahalanobis is None
    back.save(tmp_path / "again")
    assert (tmp_path / "again" / STATS_FILE).read_bytes() == (tmp_path / "s" / STATS_FILE).read_bytes()


def saved_and_changed(tmp_path, stats, change_meta=None, change_tensors=None):
    """`stats` saved to tmp_path/s, then its meta.json and tensors edited in place (an older or damaged folder)."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "s"
    stats.save(folder)
    if change_meta:
        meta = json.loads((folder / META_FILE).read_text())
        change_meta(meta)
        (folder / META_FILE).write_text(json.dumps(meta))
    if change_tensors:
        tensors = load_file(str(folder / STATS_FILE))
        change_tensors(tensors)
        save_file(tensors, str(folder / STATS_FILE))
    return folder


def test_an_older_folder_without_seen_or_pooled_loads(tmp_path):
    older = lambda t: [t.pop(k) for k in list(t) if k.endswith((".seen", ".pooled"))]  # noqa: E731
    back = ActivationStats.load(saved_and_changed(tmp_path, filled(), change_tensors=older))
    assert back.reservoirs[0].seen == 8 and back.pooled(0).shape == (0, 5)


@pytest.mark.parametrize("change_meta,change_tensors,message", [
    (lambda m: m.pop("layers"), None, "is not eptk activation-statistics metadata (no 'layers' list)"),
    (None, lambda t: t.pop("layer2.samples"), "lacks layer2.samples; recapture with `eptk capture`"),
    (None, lambda t: t.update({"layer0.cov": torch.zeros(4, 4)}),
     "layer0 has mean (5,) and cov (4, 4), expected (5,) and (5, 5)"),
])
def test_damaged_folders_are_refused_by_name(tmp_path, change_meta, change_tensors, message):
    folder = saved_and_changed(tmp_path, filled(), change_meta=change_meta, change_tensors=change_tensors)
    with pytest.raises(EptkUsageError) as refused:
        ActivationStats.load(folder)
    assert message in str(refused.value)


def test_statistics_of_another_model_are_refused():
    check_model({"model": "tiny", "hidden_size": 64}, "tiny", 64)
    check_model({}, "tiny", 64)  # nothing recorded: nothing to refuse
    with pytest.raises(EptkUsageError) as refused:
        check_model({"model": "tiny"}, "smollm2")
    assert str(refused.value) == ("activation statistics were captured from model 'tiny', not 'smollm2'; capture "
                                  "them for 'smollm2' with `eptk capture --model smollm2`")
    with pytest.raises(EptkUsageError) as refused:
        check_model({"model": "tiny", "hidden_size": 64}, "tiny", 576)
    assert str(refused.value) == "activation statistics have width 64 (model 'tiny') but model 'tiny' has hidden size 576"


@pytest.mark.parametrize("seed", [7, None])
def test_loaded_reservoirs_draw_as_a_fresh_capture_of_that_seed_would(tmp_path, seed):
    """A loaded layer's reservoir is seeded as the capture seeds it (from the seed in meta.json, 0 for a folder
    that records none), each layer its own stream; its capacity is the capture's `samples`, not the rows it kept."""
    stats = ActivationStats(5, [0, 2], 16, seed=seed or 0, meta={"model": "tiny"})
    for l in (0, 2):
        stats.reservoirs[l].add(rows(6, seed=l))         # fewer rows than the capacity
    record = {"samples": 16, **({"seed": seed} if seed is not None else {})}
    back = ActivationStats.load(saved_and_changed(tmp_path, stats, change_meta=lambda m: m.update(record)))
    fresh = ActivationStats(5, [0, 2], 16, seed=seed or 0)
    more = rows(40, seed=3)
    for l in (0, 2):
        assert back.reservoirs[l].capacity == 16 and back.reservoirs[l].seen == 6
        assert torch.equal(back.reservoirs[l].generator.get_state(), fresh.reservoirs[l].generator.get_state())
        back.reservoirs[l].add(more)
        assert back.reservoirs[l].samples.shape == (16, 5)
    assert not torch.equal(back.reservoirs[0].samples[6:], back.reservoirs[2].samples[6:])


def test_statistics_file_names_its_format_in_its_header(tmp_path):
    from safetensors import safe_open

    filled().save(tmp_path / "s")
    with safe_open(str(tmp_path / "s" / STATS_FILE), "pt") as f:
        assert f.metadata() == {"format": FORMAT}


def test_a_width_alone_is_checked_and_damaged_files_are_named(tmp_path):
    folder = saved_and_changed(tmp_path, filled())
    with pytest.raises(EptkUsageError) as refused:
        ActivationStats.load(folder, hidden_size=576)             # no model name: the width is still checked
    assert "have width 5" in str(refused.value) and "hidden size 576" in str(refused.value)
    (folder / STATS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(EptkUsageError) as refused:
        ActivationStats.load(folder)
    assert str(refused.value).startswith(f"activation statistics {folder / STATS_FILE}")
    (folder / META_FILE).write_text("{")
    with pytest.raises(EptkUsageError) as refused:
        ActivationStats.load(folder)
    assert str(refused.value).startswith(f"activation statistics metadata {folder / META_FILE} is not valid JSON")


@pytest.mark.parametrize("dropped,listed", [
    (("layer0.mean", "layer0.cov", "layer0.count", "layer0.samples"),
     "lacks layer0.mean, layer0.cov, layer0.count, layer0.samples; recapture"),
    (("layer0.mean", "layer0.cov", "layer0.count", "layer0.samples", "layer2.mean"),
     "lacks layer0.mean, layer0.cov, layer0.count, layer0.samples ...; recapture"),
])
def test_missing_tensors_are_listed_four_at_most(tmp_path, dropped, listed):
    folder = saved_and_changed(tmp_path, filled(), change_tensors=lambda t: [t.pop(k) for k in dropped])
    with pytest.raises(EptkUsageError) as refused:
        ActivationStats.load(folder)
    assert listed in str(refused.value)


def test_one_layer_and_no_layer_folders_load(tmp_path):
    one = ActivationStats.load(saved_and_changed(tmp_path / "one", filled(layers=(3,), d=4)))
    assert one.layers == [3] and one.dim == 4
    unrecorded = ActivationStats.load(saved_and_changed(tmp_path / "unrecorded", filled(layers=(3,), d=4),
                                                        change_meta=lambda m: m.pop("hidden_size")))
    assert unrecorded.dim == 4                                    # the width from the tensors themselves
    empty = ActivationStats.load(saved_and_changed(tmp_path / "none", ActivationStats(6, [], 8)))
    assert empty.layers == [] and empty.dim == 6                  # the width from meta.json's hidden_size
    unknown = ActivationStats.load(saved_and_changed(tmp_path / "unknown", ActivationStats(6, [], 8),
                                                     change_meta=lambda m: m.pop("hidden_size")))
    assert unknown.dim == 0                                       # no layer and no recorded width: none


def test_a_folder_that_records_no_sample_count_keeps_what_it_holds(tmp_path):
    """Without `samples` in meta.json (statistics not written by a capture) each reservoir's capacity is the
    rows it kept: none kept, none taken later."""
    stats = ActivationStats(5, [0, 1], 8)
    stats.reservoirs[1].add(rows(3))
    back = ActivationStats.load(saved_and_changed(tmp_path, stats))
    assert (back.reservoirs[0].capacity, back.reservoirs[1].capacity) == (0, 3)
    back.reservoirs[0].add(rows(4))
    assert back.reservoirs[0].samples.shape == (0, 5) and back.reservoirs[0].seen == 4


def test_a_layer_view_names_its_layer_and_carries_its_pooled_rows():
    stats = filled()
    stats.max_mahalanobis[2] = 4.0
    view = stats.layer(2)
    assert view.layer == 2 and view.max_mahalanobis == 4.0 and stats.layer(0).max_mahalanobis is None
    assert torch.equal(view.pooled, stats.pooled(2)) and view.pooled.shape == (3, 5)


def test_exactly_as_many_tokens_as_dimensions_is_still_shrunk():
    """The sample covariance of n <= d rows is singular (rank n − 1): at n == d it is shrunk too."""
    g, res = RunningGaussian(5).add(rows(5)), Reservoir(8, 5)
    res.add(rows(5))
    view = layer_activations(0, g, res)
    assert torch.linalg.matrix_rank(g.covariance()) == 4
    torch.testing.assert_close(view.cov, view.shrunk_cov)


def test_a_covariance_no_ridge_can_factor_is_a_usage_error():
    view = layer_activations(0, RunningGaussian(3).add(rows(10, d=3)), Reservoir(4, 3))
    view.shrunk_cov = torch.full((3, 3), float("nan"))
    with pytest.raises(EptkUsageError, match="covariance is not positive definite even with a ridge"):
        view.scale_tril()


def test_sums_in_float32_are_merged_in_float64():
    """`update` takes a capture kernel's Σx and Σxxᵀ in float32 and divides and subtracts in float64: the result
    is exactly that of the same sums handed over in float64."""
    x = rows(50).float()
    count, total, gram = torch.tensor(50.0), x.sum(0), x.T @ x
    from32 = RunningGaussian(5).update(count, total, gram)
    from64 = RunningGaussian(5).update(count.double(), total.double(), gram.double())
    assert from32.mean.dtype == from32.m2.dtype == torch.float64
    assert torch.equal(from32.mean, from64.mean) and torch.equal(from32.m2, from64.m2)


def test_a_batch_count_is_exact_past_float32_integers():
    n = 2**24 + 1                                           # float32 rounds it to 2**24
    g = RunningGaussian(1).add(torch.zeros(n, 1))
    assert g.count == n


def test_statistics_start_on_the_device_asked_for_and_seed_0_by_default():
    on_meta = ActivationStats(3, [0, 1], 4, device="meta")
    on_meta.gaussians[0].add(torch.ones(2, 3))                 # rows from the CPU come to the device asked for
    for l in (0, 1):
        assert on_meta.gaussians[l].mean.device.type == on_meta.reservoirs[l].rows.device.type == "meta"
    g = RunningGaussian(3).update(torch.tensor(2.0), torch.zeros(3, device="meta"), torch.zeros(3, 3, device="meta"))
    g.update(torch.tensor(3.0), torch.ones(3), torch.eye(3))   # later sums from another device follow the state
    assert g.mean.device.type == g.m2.device.type == "meta"
    default, zero = ActivationStats(3, [0, 1], 4), ActivationStats(3, [0, 1], 4, seed=0)
    for l in (0, 1):
        assert torch.equal(default.reservoirs[l].generator.get_state(), zero.reservoirs[l].generator.get_state())


def test_pooled_rows_are_joined_once_then_returned_as_they_are():
    stats = filled()
    stats.pooled_parts[0].append(rows(2).float())
    joined = stats.pooled(0)
    assert joined.shape == (5, 5) and stats.pooled(0) is joined and stats.pooled_parts[0] == [joined]


def algorithm_r(stream: torch.Tensor, capacity: int, seed: int, chunks: list[int]) -> torch.Tensor:
    """Algorithm R row by row, as written in Vitter (1985): row i < n fills slot i; a later row i draws j
    uniformly from 0..i and replaces slot j when j < n. The draws are the reservoir's (one float64 uniform per
    offered row, from a generator of that seed, a chunk at a time)."""
    g = torch.Generator().manual_seed(seed)
    draws = torch.cat([torch.rand(c, generator=g, dtype=torch.float64) for c in chunks])
    kept = [None] * capacity
    for i, row in enumerate(stream):
        j = i if i < capacity else int(draws[i] * (i + 1))
        if j < capacity:
            kept[j] = row
    return torch.stack([r for r in kept if r is not None])


@pytest.mark.parametrize("capacity,chunks", [(10, [100]), (10, [7, 13, 80]), (1, [1, 1, 30]), (3, [3, 40])])
def test_reservoir_is_algorithm_r_row_by_row(capacity, chunks):
    stream = rows(sum(chunks)).float()
    r = Reservoir(capacity, 5, seed=4)
    for part in stream.split(chunks):
        r.add(part)
    assert r.seen == len(stream)
    torch.testing.assert_close(r.samples, algorithm_r(stream, capacity, 4, chunks), rtol=0, atol=0)


def test_reservoir_defaults_and_its_device():
    assert torch.equal(Reservoir(4, 3).generator.get_state(), Reservoir(4, 3, seed=0).generator.get_state())
    on_meta = Reservoir(4, 3, device="meta")
    on_meta.add(torch.ones(5, 3))                               # rows offered from the CPU come to the device
    assert on_meta.rows.device.type == "meta" and on_meta.seen == 5
    one = Reservoir(4, 3)
    one.add(torch.ones(1, 3))
    assert one.samples.shape == (1, 3) and one.seen == 1


def test_an_empty_gaussian_is_float64_too():
    """The state is float64 from the start, not only once a batch has been merged into it."""
    g = RunningGaussian(3)
    assert g._count.dtype == g.mean.dtype == g.m2.dtype == g.covariance().dtype == torch.float64
    assert g.count == 0.0 and torch.equal(g.covariance(), torch.zeros(3, 3, dtype=torch.float64))
