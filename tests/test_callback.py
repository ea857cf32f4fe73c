"""RepSimCallback inside a real transformers.Trainer run on a tiny llama: what it logs, where, and that it only watches."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from hf_repsim import RepSimCallback
from hf_repsim.callback import DEFAULT_KEYS
from hf_repsim.data import CausalLMExamples, ContextWindows, token_windows
from tests.tiny import corpus, tiny_llama, word_tokenizer

STEPS, EVERY = 25, 5
#: The model at step 0 is the reference itself: KL is a mean of exact zeros up to float32 logits' rounding.
IDENTICAL_KL = 1e-9
#: d_LLV of a model with itself: square roots of rounding-level variances (about 3e-12 seen; float64 statistics).
IDENTICAL_D_LLV = 1e-8
#: With lr 1e-2 for 25 Adam steps the tiny model moves far: d_LLV grows well past rounding.
MOVED_D_LLV = 1e-3


@pytest.fixture(scope="module")
def data():
    text = corpus()
    tokenizer = word_tokenizer(text)
    windows = token_windows([text], tokenizer, seq_len=16, max_contexts=None)
    evaluation = ContextWindows(windows.input_ids[:20], windows.context_mask[:20])  # 300 contexts, held out
    return tokenizer, evaluation, CausalLMExamples(windows.input_ids[20:])


def make_trainer(tmp_path, data, seed: int = 0, steps: int = STEPS) -> Trainer:
    tokenizer, _, train = data
    args = TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=steps,
        learning_rate=1e-2,
        per_device_train_batch_size=4,
        report_to=[],
        logging_steps=EVERY,
        use_cpu=True,
        save_strategy="no",
        seed=seed,
        disable_tqdm=True,
    )
    return Trainer(model=tiny_llama(len(tokenizer), seed=seed), args=args, train_dataset=train)


class Recorder(TrainerCallback):
    """A stand-in reporter: what on_log hands every reporter."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append(dict(logs))


def repsim_entries(log_history: list[dict], key: str = "repsim/d_llv") -> list[dict]:
    return [entry for entry in log_history if key in entry]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    trainer = make_trainer(tmp_path_factory.mktemp("trainer"), data)
    recorder = Recorder()
    trainer.add_callback(recorder)
    callback = RepSimCallback(eval_windows=data[1], every_n_steps=EVERY, batch_size=8).attach(trainer)
    trainer.train()
    return trainer, callback, recorder


def test_measures_reach_log_history_and_reporters_at_every_nth_step(trained):
    trainer, callback, recorder = trained
    entries = repsim_entries(trainer.state.log_history)

    assert [e["step"] for e in entries] == list(range(0, STEPS + 1, EVERY))
    for entry in entries:
        assert {"repsim/" + key for key in DEFAULT_KEYS} <= set(entry)
    assert len(repsim_entries(recorder.logs)) == len(entries)
    assert [h["step"] for h in callback.history] == [e["step"] for e in entries]
    # The Trainer's own loss log, due at the same steps, still happens.
    assert [e["step"] for e in trainer.state.log_history if "loss" in e] == list(range(EVERY, STEPS + 1, EVERY))


def test_step_zero_compares_the_model_with_itself(trained):
    first = repsim_entries(trained[0].state.log_history)[0]

    assert first["step"] == 0
    assert 0 <= first["repsim/kl"] < IDENTICAL_KL
    assert first["repsim/d_llv"] < IDENTICAL_D_LLV
    assert first["repsim/m_cca_f"] > 1 - 1e-6


def test_d_llv_grows_as_training_moves_the_model(trained):
    trainer, _, _ = trained
    d_llv = [e["repsim/d_llv"] for e in repsim_entries(trainer.state.log_history)]
    kl = [e["repsim/kl"] for e in repsim_entries(trainer.state.log_history)]

    assert d_llv[-1] > d_llv[0] + MOVED_D_LLV
    assert d_llv[-1] > MOVED_D_LLV and kl[-1] > IDENTICAL_KL


def test_the_model_is_left_in_training_mode_and_the_reference_frozen(trained):
    trainer, callback, _ = trained
    model = trainer.model

    assert callback.reference is not model
    assert not callback.reference.training
    assert not any(p.requires_grad for p in callback.reference.parameters())
    assert all(p.requires_grad for p in model.parameters())


def test_training_is_the_same_with_and_without_the_callback(tmp_path, data):
    steps = 6
    plain = make_trainer(tmp_path / "plain", data, steps=steps)
    plain.train()
    watched = make_trainer(tmp_path / "watched", data, steps=steps)
    RepSimCallback(eval_windows=data[1], every_n_steps=2).attach(watched)
    watched.model.train()  # a module left in training mode must stay so
    watched.train()

    for a, b in zip(plain.model.parameters(), watched.model.parameters()):
        assert torch.equal(a, b)


def test_an_unattached_callback_still_fills_log_history_and_says_reporters_miss_it(tmp_path, data):
    trainer = make_trainer(tmp_path, data, steps=4)
    callback = RepSimCallback(eval_windows=data[1], every_n_steps=2, keys=("kl", "d_llv"))
    trainer.add_callback(callback)

    with pytest.warns(UserWarning, match="attach"):
        trainer.train()
    entries = repsim_entries(trainer.state.log_history)
    assert [e["step"] for e in entries] == [0, 2, 4]
    assert set(entries[0]) == {"repsim/kl", "repsim/d_llv", "epoch", "step"}


def test_attaching_twice_adds_the_callback_once(tmp_path, data):
    trainer = make_trainer(tmp_path, data, steps=1)
    callback = RepSimCallback(eval_windows=data[1])
    callback.attach(trainer)
    callback.attach(trainer)
    assert sum(c is callback for c in trainer.callback_handler.callbacks) == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"every_n_steps": 0}, ValueError, "every_n_steps"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"keys": ("kl", "nope")}, ValueError, "nope"),
        ({"keys": ("input_set",)}, ValueError, "input_set"),
        ({"keys": "kl"}, TypeError, "single string"),
        ({"eval_windows": torch.zeros(2, 4)}, TypeError, "ContextWindows"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(data, kwargs, error, match):
    with pytest.raises(error, match=match):
        RepSimCallback(**{"eval_windows": data[1], **kwargs})


def test_too_few_evaluation_contexts_fail_before_training(tmp_path, data):
    trainer = make_trainer(tmp_path, data, steps=1)
    few = ContextWindows(data[1].input_ids[:1], data[1].context_mask[:1])  # 15 contexts < hidden + 1 = 17
    RepSimCallback(eval_windows=few).attach(trainer)
    with pytest.raises(ValueError, match="hidden \\+ 1 = 17"):
        trainer.train()


def test_each_module_gets_back_the_training_flag_it_had(data):
    model = tiny_llama(len(data[0])).train()
    model.model.layers[0].eval()  # e.g. a frozen block kept in eval mode on purpose
    flags = [m.training for m in model.modules()]
    callback = RepSimCallback(eval_windows=data[1], every_n_steps=1, keys=("kl",))
    args, state = SimpleNamespace(deepspeed=None, fsdp=None), TrainerState(global_step=0, max_steps=2)

    with pytest.warns(UserWarning, match="attach"):
        callback.on_train_begin(args, state, TrainerControl(), model=model)
    state.global_step = 1
    callback.on_step_end(args, state, TrainerControl(), model=model)

    assert [m.training for m in model.modules()] == flags
    assert [h["step"] for h in callback.history] == [0, 1]
    assert [e["step"] for e in state.log_history] == [0, 1]
