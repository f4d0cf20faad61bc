"""TrainingDataGenerator on real stores: stage counts, dedup, exclusion, rehearsal mixing, output format."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from afs_continuous import RehearsalBuffer, UsageLogger

NO_TRIGGERS = {"min_new_samples": None, "schedule_interval_hours": None, "quality_drop_threshold": None}


def log(logger: UsageLogger, query: str, response: str, quality: float | None, feedback: int | None) -> str:
    rid = logger.log(query, response, "base", quality_score=quality)
    if feedback is not None:
        logger.record_feedback(rid, feedback)
    return rid


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def user_text(sample: dict[str, Any]) -> str:
    return next(m["content"] for m in sample["messages"] if m["role"] == "user")


@pytest.fixture
def staged(tmp_path, clock, make_loop, trainer):
    """A store with one successful run (T1, T2 trained) and then a mix covering every filter."""
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, train_fn=trainer, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 2, "include_existing_data": False})
    lg = loop.logger
    log(lg, "Trained question one", "Trained answer one", 0.9, 1)
    log(lg, "Trained question two", "Trained answer two", 0.9, 1)
    lg.flush()
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "promoted"
    clock.advance(seconds=1)
    ids = {
        "n1": log(lg, "New question one", "New answer one", 0.90, 1),
        "n2": log(lg, "New question two", "New answer two", 0.80, 1),
        "n3": log(lg, "New question three", "New answer three", 0.75, 1),
        "low": log(lg, "Low quality question", "meh", 0.50, 1),
        "neg": log(lg, "Disliked question", "wrong answer", 0.90, -1),
        "unrated": log(lg, "Unrated question", "an answer", 0.90, None),
        "dup_case": log(lg, "NEW QUESTION ONE", "NEW ANSWER ONE", 0.95, 1),
        "dup_space": log(lg, "  new   question\tone ", "new answer\n one", 0.85, 1),
        "retrained": log(lg, "trained question ONE", "trained answer one", 0.9, 1),
        "blank": log(lg, "Blank answer question", " \n\t ", 0.9, 1),
    }
    lg.flush()
    return loop, ids


def test_every_stage_is_counted(staged) -> None:
    loop, ids = staged
    gen = loop.generator.generate(after=loop.triggers.state()["data_watermark"], name="stages")
    # The watermark lies late_arrival_hours (24 h) before run 1, so run 1's two records are candidates
    # again; their content is excluded as already trained.
    assert gen.counts == {
        "candidates": 12,
        "after_quality": 10,  # low quality and whitespace-only answer removed
        "after_feedback": 8,  # thumbs down and unrated removed
        "after_dedup": 5,  # two variants of "new question one" folded into one; T1 and "trained question ONE" too
        "after_exclude_trained": 3,  # T1, T2 (and so "trained question ONE") were used by run 1
        "after_near_dedup": 3,  # short, different texts: no near duplicates
        "new_samples": 3,
        "rehearsal_samples": 0,
        "total": 3,
        "validation_samples": 0,
    }
    # highest quality first, and the dedup survivor is the best-scored variant
    assert gen.record_ids == [ids["dup_case"], ids["n2"], ids["n3"]]
    assert gen.output_path is not None and len(read_jsonl(gen.output_path)) == 3


def test_dedup_survivors_are_the_same_on_a_rerun(staged) -> None:
    loop, _ = staged
    wm = loop.triggers.state()["data_watermark"]
    first = loop.generator.generate(after=wm, name="a")
    second = loop.generator.generate(after=wm, name="b")
    assert first.record_ids == second.record_ids
    assert first.output_path.read_bytes() == second.output_path.read_bytes()


def test_max_samples_keeps_the_best(staged) -> None:
    loop, ids = staged
    loop.generator.config.max_samples = 2
    gen = loop.generator.generate(after=loop.triggers.state()["data_watermark"], name="capped")
    assert (gen.counts["after_exclude_trained"], gen.counts["new_samples"], gen.counts["total"]) == (3, 2, 2)
    assert gen.record_ids == [ids["dup_case"], ids["n2"]]


def test_records_used_by_an_earlier_run_are_excluded_even_without_the_watermark(staged) -> None:
    loop, ids = staged
    gen = loop.generator.generate(after=None, name="all")
    assert gen.counts["candidates"] == 12
    assert gen.counts["after_dedup"] == 5  # T1 (logged twice), T2, N1 (three variants), N2, N3
    assert gen.counts["after_exclude_trained"] == 3
    texts = {user_text(s) for s in read_jsonl(gen.output_path)}
    assert not any(t.lower().startswith("trained") for t in texts)


def test_a_failed_run_does_not_consume_its_records(tmp_path, clock, make_loop) -> None:
    def broken(data_path: str) -> dict[str, Any]:
        raise RuntimeError("CUDA out of memory")

    loop = make_loop(tmp_path, clock, train_fn=broken, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 2, "include_existing_data": False})
    for i in range(3):
        log(loop.logger, f"q{i}", f"a{i}", 0.9, 1)
    loop.logger.flush()
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "failed"
    again = loop.generator.generate(after=loop.triggers.state()["data_watermark"], name="again")
    assert again.counts["new_samples"] == 3


def test_output_is_chat_jsonl(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False,
                                       "system_prompt": "You are a helpful assistant."})
    rows = good_rows[:20]
    log_rows(loop, rows, "base")
    gen = loop.generator.generate(after=None)
    samples = read_jsonl(gen.output_path)
    assert len(samples) == 20
    by_instruction = {r["instruction"]: r["output"] for r in rows}
    for s in samples:
        assert list(s) == ["messages"]
        roles = [m["role"] for m in s["messages"]]
        assert roles == ["system", "user", "assistant"]
        assert s["messages"][0]["content"] == "You are a helpful assistant."
        assert by_instruction[s["messages"][1]["content"]] == s["messages"][2]["content"]


@pytest.mark.parametrize("fmt", ["alpaca", "chat"])
def test_rehearsal_mix_at_the_configured_fraction(tmp_path, clock, make_loop, alpaca, good_rows, log_rows, fmt) -> None:
    old = alpaca("OpenHermes-2.5-Mistral-7B")[500:600]
    buffer_path = tmp_path / f"rehearsal_{fmt}.jsonl"
    with buffer_path.open("w", encoding="utf-8") as fh:
        for r in old:
            if fmt == "alpaca":
                row: dict[str, Any] = {"instruction": r["instruction"], "input": "", "output": r["output"]}
            else:
                row = {"messages": [{"role": "user", "content": r["instruction"]},
                                    {"role": "assistant", "content": r["output"]}]}
            fh.write(json.dumps(row) + "\n")
        fh.write("not json\n")
        fh.write(json.dumps({"unrelated": 1}) + "\n")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "existing_data_path": str(buffer_path),
                                       "rehearsal_fraction": 0.2})
    assert len(loop.generator.rehearsal_buffer) == 100  # malformed lines skipped
    log_rows(loop, good_rows[:40], "base")
    gen = loop.generator.generate(after=None)
    assert (gen.counts["new_samples"], gen.counts["rehearsal_samples"], gen.counts["total"]) == (40, 10, 50)
    samples = read_jsonl(gen.output_path)
    assert len(samples) == 50
    old_instructions = {r["instruction"] for r in old}
    from_buffer = [s for s in samples if user_text(s) in old_instructions]
    assert len(from_buffer) == 10
    assert len({user_text(s) for s in from_buffer}) == 10  # drawn without replacement
    assert all([m["role"] for m in s["messages"]] == ["user", "assistant"] for s in samples)


def test_rehearsal_smaller_than_wanted_uses_what_there_is(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    buffer_path = tmp_path / "small.jsonl"
    buffer_path.write_text("\n".join(json.dumps({"instruction": f"old {i}", "output": f"x {i}"}) for i in range(3)) + "\n",
                           encoding="utf-8")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "existing_data_path": str(buffer_path)})
    log_rows(loop, good_rows[:40], "base")
    gen = loop.generator.generate(after=None)
    assert (gen.counts["rehearsal_samples"], gen.counts["total"]) == (3, 43)


def test_too_few_samples_writes_nothing_and_never_calls_train_fn(tmp_path, clock, make_loop, trainer, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 10})
    log_rows(loop, good_rows[:9], "base")
    gen = loop.generator.generate(after=None, name="few")
    assert gen.output_path is None
    assert (gen.counts["new_samples"], gen.counts["total"]) == (9, 0)
    assert not (tmp_path / "data" / "runs" / "few.jsonl").exists()

    result = loop.run_iteration(manual=True)
    assert result["retrain"]["status"] == "skipped"
    assert result["retrain"]["reason"] == "only 9 new samples after filtering, need at least 10; train_fn not called"
    assert result["retrain"]["data_path"] is None
    assert trainer.calls == []
    run = loop.runs.get(result["retrain"]["run_id"])
    assert run.status.value == "skipped" and "train_fn not called" in run.error
    assert loop.registry.champion().name == "base"


def test_everything_filtered_out_is_skipped(tmp_path, clock, make_loop, trainer) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS)
    for i in range(30):
        log(loop.logger, f"q{i}", f"a{i}", 0.2, -1)
    loop.logger.flush()
    result = loop.run_iteration(manual=True)
    assert result["retrain"]["status"] == "skipped"
    assert result["retrain"]["counts"]["after_quality"] == 0
    assert trainer.calls == []


@pytest.mark.parametrize("keep", [False, True])
def test_training_data_deleted_after_success_unless_kept(tmp_path, clock, make_loop, trainer, good_rows, log_rows, keep) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, keep_training_data=keep)
    log_rows(loop, good_rows[:12], "base")
    result = loop.run_iteration(manual=True)
    assert result["retrain"]["status"] == "deployed"
    data_path = Path(result["retrain"]["data_path"])
    assert trainer.calls == [str(data_path)]
    assert data_path.exists() is keep


def test_rehearsal_buffer_grows_but_never_past_its_size(tmp_path, clock, make_loop, trainer, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, train_fn=trainer, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 10, "rehearsal_buffer_size": 15, "rehearsal_fraction": 0.2})
    buffer = loop.generator.rehearsal_buffer
    sizes, rehearsal_counts = [], []
    for cycle in range(5):
        clock.advance(hours=1)
        log_rows(loop, good_rows[cycle * 10:(cycle + 1) * 10], "base")
        result = loop.run_iteration(manual=True)
        assert result["retrain"]["status"] == "promoted", result["retrain"]
        rehearsal_counts.append(result["retrain"]["counts"]["rehearsal_samples"])
        sizes.append(len(buffer))
    assert sizes == [10, 15, 15, 15, 15]
    assert rehearsal_counts == [0, 2, 2, 2, 2]  # round(10 * 0.2 / 0.8) from the second cycle on
    assert loop.store.get_state("rehearsal_n_seen") == 50
    instructions = [user_text(s) for s in buffer.load()]
    assert len(set(instructions)) == 15  # a sample, not copies
    seen = {r["instruction"] for r in good_rows[:50]}
    assert set(instructions) <= seen
    # rehearsal samples were really in the training files
    for samples in trainer.samples[1:]:
        assert len(samples) == 12


def test_reservoir_keeps_a_uniform_sample_of_history(tmp_path: Path) -> None:
    """Algorithm R over 10 cycles of 10 items: each item ends up in the 10-slot buffer with probability 1/10."""
    import random

    hits = [0] * 100
    trials = 100
    for t in range(trials):
        buf = RehearsalBuffer(tmp_path / f"b{t % 3}.jsonl", max_size=10)
        buf.path.unlink(missing_ok=True)
        n_seen = 0
        rng = random.Random(t)
        for cycle in range(10):
            items = [{"messages": [{"role": "user", "content": str(cycle * 10 + i)}]} for i in range(10)]
            n_seen = buf.add(items, n_seen=n_seen, rng=rng)
        assert n_seen == 100
        kept = buf.load()
        assert len(kept) == 10
        for s in kept:
            hits[int(s["messages"][0]["content"])] += 1
    # each cycle's 10 items hold ~100 of the 1000 kept samples (sd ~9.5); "keep the newest" gives 0 or 1000
    per_cycle = [sum(hits[c * 10:(c + 1) * 10]) for c in range(10)]
    assert all(60 <= n <= 140 for n in per_cycle), per_cycle


# ------------------------------------------------------------------ near duplicates, formats, splits, export

def edited(text: str, k: int = 0) -> str:
    """``text`` with one word in the middle changed: a near duplicate (Jaccard ~0.97 for 300 words)."""
    words = text.split(" ")
    i = len(words) // 2 + k
    words[i] = words[i] + "s"
    return " ".join(words)


@pytest.fixture
def long_rows(good_rows) -> list[dict[str, Any]]:
    """Judge-preferred rows with answers of 150+ words (one edited word keeps Jaccard >= 0.9)."""
    rows = [r for r in good_rows if len(r["output"].split()) >= 150]
    assert len(rows) >= 100
    return rows


def test_near_duplicates_within_new_data_keep_the_best_scored(tmp_path, clock, make_loop, long_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False})
    lg = loop.logger
    originals = [log(lg, r["instruction"], r["output"], 0.8, 1) for r in long_rows[:20]]
    variants = [log(lg, r["instruction"], edited(r["output"]), 0.75, 1) for r in long_rows[:5]]
    better = log(lg, long_rows[5]["instruction"], edited(long_rows[5]["output"], 3), 0.95, 1)
    lg.flush()
    gen = loop.generator.generate(after=None)
    assert gen.counts["after_exclude_trained"] == 26  # every variant differs exactly
    assert gen.counts["after_near_dedup"] == gen.counts["new_samples"] == gen.counts["total"] == 20
    ids = gen.record_ids
    assert ids[0] == better and originals[5] not in ids  # the better-scored variant survives, first
    assert not set(variants) & set(ids)
    assert len(read_jsonl(gen.output_path)) == 20


def test_near_duplicate_removal_can_be_switched_off(tmp_path, clock, make_loop, long_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False, "near_dedup_threshold": None})
    for r in long_rows[:10]:
        log(loop.logger, r["instruction"], r["output"], 0.8, 1)
        log(loop.logger, r["instruction"], edited(r["output"]), 0.8, 1)
    loop.logger.flush()
    gen = loop.generator.generate(after=None)
    assert gen.counts["after_near_dedup"] == gen.counts["new_samples"] == 20


@pytest.mark.parametrize("mixed", [True, False])
def test_near_duplicates_of_the_rehearsal_buffer_are_dropped(tmp_path, clock, make_loop, alpaca, long_rows,
                                                            mixed) -> None:
    old = [r for r in alpaca("FuseChat-Qwen-2.5-7B") if len(r["output"].split()) >= 150][:30]
    buffer_path = tmp_path / "buffer.jsonl"
    buffer_path.write_text("".join(json.dumps({"instruction": r["instruction"], "input": "", "output": r["output"]}) + "\n"
                                   for r in old), encoding="utf-8")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "existing_data_path": str(buffer_path),
                                       "include_existing_data": mixed})
    for r in long_rows[:20]:
        log(loop.logger, r["instruction"], r["output"], 0.8, 1)
    for r in old[:5]:
        log(loop.logger, r["instruction"], edited(r["output"]), 0.9, 1)
    loop.logger.flush()
    gen = loop.generator.generate(after=None)
    assert gen.counts["after_exclude_trained"] == 25
    # checked against the buffer only when it is mixed into the training set
    assert gen.counts["after_near_dedup"] == (20 if mixed else 25)
    assert gen.counts["rehearsal_samples"] == (5 if mixed else 0)  # round(20 * 0.2 / 0.8)


@pytest.mark.parametrize("history", [100_000, 0])
def test_near_duplicates_of_earlier_training_runs_are_dropped(tmp_path, clock, make_loop, trainer, long_rows,
                                                             history) -> None:
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, train_fn=trainer, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False,
                                       "near_dedup_history_size": history})
    for r in long_rows[:20]:
        log(loop.logger, r["instruction"], r["output"], 0.8, 1)
    loop.logger.flush()
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "promoted"
    clock.advance(hours=1)
    for r in long_rows[:5]:
        log(loop.logger, r["instruction"], edited(r["output"]), 0.9, 1)  # reworded repeats of trained samples
    for r in long_rows[20:30]:
        log(loop.logger, r["instruction"], r["output"], 0.8, 1)
    loop.logger.flush()
    gen = loop.generator.generate(after=loop.triggers.state()["data_watermark"])
    assert gen.counts["after_exclude_trained"] == 15  # the exact repeats of run 1 are gone by hash
    assert gen.counts["after_near_dedup"] == (10 if history else 15)


def test_near_dedup_reruns_keep_the_same_survivors_and_bytes(tmp_path, clock, make_loop, long_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False, "validation_fraction": 0.2})
    for i, r in enumerate(long_rows[:40]):
        log(loop.logger, r["instruction"], r["output"], 0.7 + (i % 7) / 20, 1)
        if i % 3 == 0:
            log(loop.logger, r["instruction"], edited(r["output"], i % 5), 0.7 + (i % 5) / 20, 1)
    loop.logger.flush()
    first = loop.generator.generate(after=None, name="a")
    second = loop.generator.generate(after=None, name="b")
    assert first.counts == second.counts and first.counts["after_near_dedup"] == 40
    assert first.record_ids == second.record_ids
    assert first.output_path.read_bytes() == second.output_path.read_bytes()
    assert first.validation_path.read_bytes() == second.validation_path.read_bytes()


@pytest.mark.parametrize("fmt,keys", [("alpaca", ["instruction", "input", "output"]), ("completion", ["prompt", "completion"])])
def test_output_formats(tmp_path, clock, make_loop, good_rows, log_rows, fmt, keys) -> None:
    buffer_path = tmp_path / "buffer.jsonl"
    buffer_path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"old {i}"},
                                                             {"role": "assistant", "content": f"answer {i}"}]}) + "\n"
                                   for i in range(10)), encoding="utf-8")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "output_format": fmt, "existing_data_path": str(buffer_path)})
    rows = good_rows[:20]
    log_rows(loop, rows, "base")
    gen = loop.generator.generate(after=None)
    assert gen.output_format.value == fmt
    samples = read_jsonl(gen.output_path)
    assert len(samples) == gen.counts["total"] == 25
    assert all(list(s) == keys for s in samples)
    prompt, answer = keys[0], keys[-1]
    by_prompt = {r["instruction"]: r["output"] for r in rows}
    by_prompt.update({f"old {i}": f"answer {i}" for i in range(10)})
    assert all(by_prompt[s[prompt]] == s[answer] for s in samples)
    assert sum(s[prompt].startswith("old ") for s in samples) == 5  # rehearsal samples converted too
    assert all(s["messages"][0]["role"] == "user" for s in gen.iter_new_samples())  # the buffer stays chat


def test_system_prompt_needs_the_chat_format() -> None:
    from afs_continuous import ConfigError, DataGeneratorConfig

    with pytest.raises(ConfigError, match="system_prompt is only written in the 'chatml' output format"):
        DataGeneratorConfig(output_format="alpaca", system_prompt="Be brief.")


def test_validation_split(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False, "validation_fraction": 0.25})
    log_rows(loop, good_rows[:40], "base")
    gen = loop.generator.generate(after=None, name="split")
    assert gen.validation_path == gen.output_path.with_name("split.val.jsonl")
    train, val = read_jsonl(gen.output_path), read_jsonl(gen.validation_path)
    assert (len(train), len(val)) == (30, 10)
    assert (gen.counts["total"], gen.counts["validation_samples"]) == (40, 10)
    as_text = lambda rows: {json.dumps(r, sort_keys=True) for r in rows}  # noqa: E731
    assert not as_text(train) & as_text(val)
    assert {user_text(s) for s in train + val} == {r["instruction"] for r in good_rows[:40]}
    assert gen.to_dict()["validation_path"] == str(gen.validation_path)


def test_no_validation_file_without_a_fraction(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS, generator_config={"min_samples": 5})
    log_rows(loop, good_rows[:12], "base")
    gen = loop.generator.generate(after=None, name="noval")
    assert gen.validation_path is None and gen.counts["validation_samples"] == 0
    assert not (tmp_path / "data" / "runs" / "noval.val.jsonl").exists()


def test_parquet_export_and_hf_dataset(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    pytest.importorskip("pyarrow")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False, "export_parquet": True,
                                       "validation_fraction": 0.1})
    log_rows(loop, good_rows[:30], "base")
    gen = loop.generator.generate(after=None, name="pq")
    assert gen.parquet_path == tmp_path / "data" / "runs" / "pq.parquet"
    import pyarrow.parquet as pq

    table = pq.read_table(gen.parquet_path)
    assert table.num_rows == 27 and table.column_names == ["messages"]
    assert table.to_pylist() == read_jsonl(gen.output_path)
    assert pq.read_table(tmp_path / "data" / "runs" / "pq.val.parquet").num_rows == 3
    pytest.importorskip("datasets")
    ds = gen.to_hf_dataset(cache_dir=tmp_path / "hf")
    assert len(ds) == 27 and ds[0]["messages"][0]["role"] == "user"
    assert len(gen.to_hf_dataset("validation", cache_dir=tmp_path / "hf")) == 3
    with pytest.raises(ValueError, match="split must be"):
        gen.to_hf_dataset("test")


def test_hf_dataset_from_jsonl_without_parquet(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    pytest.importorskip("datasets")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False, "output_format": "completion"})
    log_rows(loop, good_rows[:12], "base")
    ds = loop.generator.generate(after=None).to_hf_dataset(cache_dir=tmp_path / "hf")
    assert len(ds) == 12 and ds.column_names == ["prompt", "completion"]


def test_export_parquet_without_pyarrow_is_a_config_error(monkeypatch) -> None:
    import importlib.util

    from afs_continuous import ConfigError, DataGeneratorConfig

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pyarrow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"export_parquet needs pyarrow.*pip install"):
        DataGeneratorConfig(export_parquet=True)


def test_result_streams_its_samples_and_cleans_up(tmp_path, clock, make_loop, good_rows, log_rows) -> None:
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "include_existing_data": False})
    ids = log_rows(loop, good_rows[:15], "base")
    gen = loop.generator.generate(after=None, name="spool")
    trained = list(gen.iter_trained())
    assert sorted(rid for rid, _ in trained) == sorted(ids) and gen.record_ids == [rid for rid, _ in trained]
    assert all(len(h) == 32 for _, h in trained)
    assert [user_text(s) for s in gen.iter_new_samples()] == [user_text(s) for s in gen.new_samples]
    with loop.store.write() as conn:
        assert loop.generator.mark_trained(gen, 1, conn=conn, batch=4) == 15
    again = loop.generator.generate(after=None, name="again")
    assert again.counts["after_exclude_trained"] == 0  # every content is now trained
    spools = list((tmp_path / "data" / "runs").glob(".gen-*"))
    assert len(spools) == 2
    gen.close(delete_files=True)
    gen.close()  # idempotent
    assert not gen.output_path.exists() and len(list((tmp_path / "data" / "runs").glob(".gen-*"))) == 1
    with pytest.raises(RuntimeError, match="closed"):
        list(gen.iter_trained())


def test_progress_bar_only_when_asked_or_on_a_terminal(tmp_path, clock, make_loop, good_rows, log_rows, capsys) -> None:
    pytest.importorskip("tqdm")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS, generator_config={"min_samples": 5})
    log_rows(loop, good_rows[:12], "base")
    capsys.readouterr()
    loop.generator.generate(after=None, name="quiet")  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    loop.generator.generate(after=None, name="bar", progress=True)
    assert "training data" in capsys.readouterr().err


def test_rehearsal_text_that_cannot_be_encoded_is_exported_as_valid_utf8(tmp_path, clock, make_loop, good_rows,
                                                                        log_rows) -> None:
    buffer_path = tmp_path / "buffer.jsonl"
    buffer_path.write_text('{"instruction": "lone \\ud800 surrogate", "output": "NUL \\u0000 here"}\n' * 5, encoding="utf-8")
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "existing_data_path": str(buffer_path), "rehearsal_fraction": 0.5})
    log_rows(loop, good_rows[:5], "base")
    gen = loop.generator.generate(after=None)
    text = gen.output_path.read_bytes().decode("utf-8")  # strict: raises on invalid UTF-8
    assert "lone \ufffd surrogate" in text and gen.counts["rehearsal_samples"] == 5


def test_rehearsal_buffer_takes_an_iterator_and_a_file_larger_than_its_size(tmp_path) -> None:
    import random

    path = tmp_path / "big.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "completion": f"c{i}"}) + "\n" for i in range(50)),
                    encoding="utf-8")
    buf = RehearsalBuffer(path, max_size=10)
    assert len(buf) == 50 and len(buf.sample(7, random.Random(0))) == 7
    fresh = ({"messages": [{"role": "user", "content": f"new {i}"}]} for i in range(1000))
    n_seen = buf.add(fresh, n_seen=None, rng=random.Random(0))
    assert n_seen == 1050 and len(buf) == 10
    contents = [s["messages"][0]["content"] for s in buf.load()]
    assert sum(c.startswith("new ") for c in contents) >= 7  # 1000 of 1050 offered were new


@pytest.mark.parametrize("keep", [False, True])
def test_a_deployed_run_leaves_no_spool_and_keeps_files_only_when_asked(tmp_path, clock, make_loop, trainer, good_rows,
                                                                        log_rows, keep) -> None:
    loop = make_loop(tmp_path, clock, train_fn=trainer, trigger_config=NO_TRIGGERS, keep_training_data=keep,
                     generator_config={"validation_fraction": 0.25, "include_existing_data": False})
    ids = log_rows(loop, good_rows[:12], "base")
    result = loop.run_iteration(manual=True)["retrain"]
    assert result["status"] == "deployed"
    runs = tmp_path / "data" / "runs"
    data_path = Path(result["data_path"])
    assert trainer.n_lines == [9]  # 3 of 12 held out for validation
    assert data_path.exists() is keep and data_path.with_name(data_path.stem + ".val.jsonl").exists() is keep
    assert not list(runs.glob(".gen-*"))  # the spool of new samples is gone
    with loop.store.read() as conn:
        used = {r[0] for r in conn.exec_driver_sql("SELECT record_id FROM training_samples")}
    assert used == set(ids)
    assert len(loop.generator.rehearsal_buffer) == 12


def test_signatures_are_datasketch_minhash_over_the_shingles() -> None:
    """The batched signatures equal datasketch's MinHash (affine32) fed the same shingle hashes one by one."""
    from datasketch import MinHash

    from afs_continuous._dedup import MinHasher, shingle_tokens

    mh = MinHasher(num_perm=64, ngram=5)
    pairs = [("How do I boil an egg?", "Put the egg in boiling water for nine minutes, then cool it."),
             ("", "ok"), ("Straße İstanbul", "ΣΊΣΥΦΟΣ \u00a0 tab\tend\u3000x"), ("lone \ud800", "x" * 50)]
    sigs = mh.signatures(pairs)
    for (query, response), sig in zip(pairs, sigs):
        shingles = mh.shingle_hashes(query, response)
        assert len(shingles) == max(1, len(shingle_tokens(query, response)) - 4)
        reference = MinHash(num_perm=64, seed=1, hashfunc=int)
        reference.update_batch(shingles.tolist())
        assert (reference.hashvalues == sig).all()


LINE_SEPARATORS = ["\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\r"]


@pytest.mark.parametrize("fmt", ["chatml", "alpaca", "completion"])
def test_line_separators_inside_texts_are_escaped_in_every_jsonl_file(tmp_path, clock, make_loop, fmt) -> None:
    """A reader splitting with str.splitlines() sees exactly one line per record in every JSONL we write
    (training file, validation file, rehearsal buffer), and each line round-trips through json."""
    import random

    buffer_path = tmp_path / "buffer.jsonl"
    old = [{"messages": [{"role": "user", "content": f"old{sep}question {i}"},
                         {"role": "assistant", "content": f"old{sep}answer {i}"}]} for i, sep in enumerate(LINE_SEPARATORS)]
    RehearsalBuffer(buffer_path, max_size=100).add(old, n_seen=0, rng=random.Random(0))
    buffer_text = buffer_path.read_text(encoding="utf-8")
    assert len(buffer_text.splitlines()) == len(old)
    assert [json.loads(line) for line in buffer_text.splitlines()] == old
    loop = make_loop(tmp_path, clock, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 5, "output_format": fmt, "existing_data_path": str(buffer_path),
                                       "rehearsal_fraction": 0.5, "validation_fraction": 0.2,
                                       "min_quality_score": None, "min_user_feedback": None,
                                       "near_dedup_threshold": None})
    texts = [f"question{sep}number {i}" for i, sep in enumerate(LINE_SEPARATORS)]
    for i, text in enumerate(texts):
        loop.log_usage(text, f"answer{LINE_SEPARATORS[-1 - i]}{i}", "base", quality_score=0.9)
    loop.logger.flush()
    gen = loop.generator.generate(after=None)
    assert gen.counts["new_samples"] == len(texts) and gen.counts["rehearsal_samples"] == len(texts)
    lines: list[str] = []
    for path in (gen.output_path, gen.validation_path):
        content = path.read_text(encoding="utf-8")
        assert len(content.splitlines()) == content.count("\n")
        lines += content.splitlines()
    assert len(lines) == gen.counts["total"] == 2 * len(texts)
    rows = [json.loads(line) for line in lines]
    prompts = {r["messages"][0]["content"] if fmt == "chatml" else r["instruction" if fmt == "alpaca" else "prompt"]
               for r in rows}
    assert prompts == set(texts) | {s["messages"][0]["content"] for s in old}  # the characters are kept, escaped


# ------------------------------------------------------------------ whole conversations (issue 9 item 3)
LONG_ANSWER = ("The Super Nintendo's CPU is the Ricoh 5A22, built around a WDC 65C816 core with added DMA and "
               "multiplication units; it runs at 3.58 MHz for most of the address space and slows to 2.68 or "
               "1.79 MHz for slower memory regions, which programmers plan around when they write hot loops.")


def conversation(system: str, earlier_question: str, earlier_answer: str, question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": earlier_question},
            {"role": "assistant", "content": earlier_answer}, {"role": "user", "content": question}]


@pytest.fixture
def conversations(tmp_path, clock, make_loop):
    """Conversation records covering exact and near duplicates over the whole conversation."""
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 1, "include_existing_data": False,
                                       "system_prompt": "Configured prompt."})
    lg = loop.logger
    long_turn = " ".join(f"detail{i}" for i in range(120))
    ids = {}

    def put(key: str, quality: float, *, messages: Any = None, query: str | None = None, response: str) -> None:
        ids[key] = lg.log(query, response, "base", messages=messages, quality_score=quality)
        lg.record_feedback(ids[key], 1)

    put("a", 0.95, messages=conversation("You are terse.", "Which CPU?", "A 65C816.", "How fast?"), response="3.58 MHz.")
    # the same final question and answer after different earlier turns: a different conversation, kept
    put("b", 0.90, messages=conversation("You are terse.", "Which console?", "The SNES.", "How fast?"),
        response="3.58 MHz.")
    # the same conversation with case and spacing changes: an exact duplicate of "a"
    put("a_dup", 0.85, messages=conversation("you are  TERSE.", "which cpu?", "A 65c816.", "How  fast?"),
        response="3.58 mhz.")
    # a long earlier turn, then a copy with one word changed in that turn: a near duplicate
    put("long", 0.80, messages=conversation("You are terse.", long_turn, "Noted.", "Summarise."), response=LONG_ANSWER)
    put("long_near", 0.75, messages=conversation("You are terse.", long_turn.replace("detail60", "changed"), "Noted.",
                                                 "Summarise."), response=LONG_ANSWER)
    # a one-turn conversation and the seed's query= record of the same text: duplicates of each other
    put("one_turn", 0.72, messages=[{"role": "user", "content": "Name a colour."}], response="Blue.")
    put("query", 0.71, query="name a colour.", response="blue.")
    lg.flush()
    return loop, ids


def test_conversations_are_deduplicated_and_exported_whole(conversations) -> None:
    loop, ids = conversations
    gen = loop.generator.generate(after=None, name="conv")
    assert gen.counts["after_feedback"] == 7
    assert gen.counts["after_dedup"] == 5  # a_dup (same conversation) and query (same one-turn text) removed
    assert gen.counts["after_near_dedup"] == 4  # long_near: one word of a 120-word turn changed
    assert gen.record_ids == [ids["a"], ids["b"], ids["long"], ids["one_turn"]]
    lines = read_jsonl(gen.output_path)
    a = next(line for line in lines if len(line["messages"]) == 5 and line["messages"][2]["content"] == "A 65C816.")
    assert a["messages"] == [
        {"role": "system", "content": "You are terse."}, {"role": "user", "content": "Which CPU?"},
        {"role": "assistant", "content": "A 65C816."}, {"role": "user", "content": "How fast?"},
        {"role": "assistant", "content": "3.58 MHz."},
    ]
    one = next(line for line in lines if line["messages"][-1]["content"] == "Blue.")
    assert one["messages"][0] == {"role": "system", "content": "Configured prompt."}  # it had none of its own
    # the rehearsal buffer receives the whole conversations too
    samples = list(gen.iter_new_samples())
    assert samples[0] == a
    gen.close()


def test_alpaca_export_renders_the_earlier_turns(conversations, tmp_path) -> None:
    from afs_continuous import DataGeneratorConfig, TrainingDataGenerator

    loop, _ = conversations
    gen = TrainingDataGenerator(loop.store, DataGeneratorConfig(min_samples=1, include_existing_data=False,
                                                                output_format="alpaca"), tmp_path / "alpaca")
    result = gen.generate(after=None, name="alpaca")
    by_output = {line["output"]: line for line in read_jsonl(result.output_path)}
    assert by_output["3.58 MHz."]["instruction"].startswith(
        "System: You are terse.\n\nUser: Which CPU?\n\nAssistant: A 65C816.\n\nUser: How fast?") or \
        by_output["3.58 MHz."]["instruction"].startswith("System: You are terse.\n\nUser: Which console?")
    assert by_output["Blue."]["instruction"] == "Name a colour."
    result.close()


def test_the_trigger_counts_conversations_as_the_generator_keeps_them(conversations, clock) -> None:
    loop, _ = conversations
    from afs_continuous._queries import backfill_content_hashes, count_eligible

    cfg = loop.config.generator_config
    with loop.store.write() as conn:
        backfill_content_hashes(conn, cfg, None, clock())
        assert count_eligible(conn, cfg, None, clock()) == 5  # exact duplicates over the whole conversation


def test_a_training_run_trains_on_and_rehearses_whole_conversations(tmp_path, clock, make_loop, trainer) -> None:
    """Through the daemon's pipeline: train_fn receives every turn, and the rehearsal buffer keeps them."""
    loop = make_loop(tmp_path, clock, enable_ab_testing=False, train_fn=trainer, trigger_config=NO_TRIGGERS,
                     generator_config={"min_samples": 2, "include_existing_data": False})
    for i in range(3):
        messages = conversation("You are terse.", f"Which CPU, part {i}?", f"A 65C816, part {i}.", f"How fast, {i}?")
        rid = loop.log_usage(messages=messages, response=f"3.58 MHz, {i}.", model="base", quality_score=0.9)
        loop.record_feedback(rid, 1, comment="good")
    loop.logger.flush()
    assert loop.run_iteration(manual=True)["retrain"]["status"] == "promoted"
    trained = trainer.samples[0]
    assert len(trained) == 3 and all(len(s["messages"]) == 5 for s in trained)
    assert [m["role"] for m in trained[0]["messages"]] == ["system", "user", "assistant", "user", "assistant"]
    buffered = loop.generator.rehearsal_buffer.load()
    assert sorted(json.dumps(s, sort_keys=True) for s in buffered) == sorted(json.dumps(s, sort_keys=True)
                                                                             for s in trained)
