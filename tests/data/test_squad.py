"""SQuAD features on hand-built examples: answer token positions, windows, decoding."""

import numpy as np
import pytest

from seven_jax.data.squad import assemble_logits, prepare_squad_features, squad_batches
from seven_jax.metrics import decode_squad_predictions, squad_scores

CONTEXT = (
  "The Normans were the people who in the 10th and 11th centuries gave their name to "
  "Normandy, a region in France. They were descended from Norse raiders and pirates from "
  "Denmark, Iceland and Norway who, under their leader Rollo, agreed to swear fealty to "
  "King Charles III of West Francia."
)
EXAMPLES = [
  {
    "id": "q1",
    "question": "  In what country is Normandy located?",
    "context": CONTEXT,
    "answers": {"text": ["France"], "answer_start": [CONTEXT.index("France")]},
  },
  {
    "id": "q2",
    "question": "Who was the Norse leader?",
    "context": CONTEXT,
    "answers": {"text": ["Rollo"], "answer_start": [CONTEXT.index("Rollo")]},
  },
  {
    "id": "q3",
    "question": "Which king?",
    "context": CONTEXT,
    "answers": {
      "text": ["King Charles III", "Charles III"],
      "answer_start": [CONTEXT.index("King Charles")],
    },
  },
]


def _answer_from_positions(tokenizer, features, feature):
  start, end = features.start_positions[feature], features.end_positions[feature]
  offsets = features.offsets[feature]
  context = EXAMPLES[features.example_indices[feature]]["context"]
  return context[offsets[start][0] : offsets[end][1]]


def test_single_window_positions(tokenizer):
  features = prepare_squad_features(EXAMPLES, tokenizer, max_len=128, doc_stride=32)
  assert len(features) == 3 and features.example_ids == ["q1", "q2", "q3"]
  assert _answer_from_positions(tokenizer, features, 0) == "France"
  assert _answer_from_positions(tokenizer, features, 1) == "Rollo"
  assert _answer_from_positions(tokenizer, features, 2) == "King Charles III"
  # Offsets are None outside the context (question, [CLS], [SEP]).
  assert features.offsets[0][0] is None and features.offsets[0][-1] is None
  first_context = features.token_type_ids[0].index(1)
  assert features.offsets[0][first_context - 1] is None and features.offsets[0][first_context] == (
    0,
    3,
  )


def test_long_context_is_split_into_overlapping_windows(tokenizer):
  features = prepare_squad_features(EXAMPLES[:1], tokenizer, max_len=32, doc_stride=8)
  assert len(features) > 2 and set(features.example_indices.tolist()) == {0}
  holders = [f for f in range(len(features)) if features.start_positions[f] != 0]
  assert holders, "some window must contain the answer"
  for feature in range(len(features)):
    if feature in holders:
      assert _answer_from_positions(tokenizer, features, feature) == "France"
    else:
      assert features.end_positions[feature] == 0  # CLS: answer not in this window
    assert len(features.input_ids[feature]) <= 32
  # consecutive windows overlap in context characters
  spans = [[o for o in offsets if o is not None] for offsets in features.offsets]
  assert spans[1][0][0] < spans[0][-1][1]


def test_decoding_gold_logits_recovers_answers_across_windows(tokenizer):
  features = prepare_squad_features(EXAMPLES, tokenizer, max_len=32, doc_stride=8)
  outputs = []
  for batch in squad_batches(
    features, 4, shuffle=False, drop_remainder=False, pad_final_batch=True
  ):
    assert batch["input_ids"].shape[1] in (16, 32)
    start = np.zeros(batch["input_ids"].shape)
    end = np.zeros(batch["input_ids"].shape)
    rows = np.flatnonzero(batch["feature_index"] >= 0)
    # Windows holding the answer point at it with a high score; the others at [CLS],
    # which decoding must ignore because [CLS] is outside the context.
    start[rows, batch["start_positions"][rows]] = 10.0
    end[rows, batch["end_positions"][rows]] = 10.0
    outputs.append((batch["feature_index"], start, end))
  start_logits, end_logits = assemble_logits(outputs, len(features), features.max_len)
  contexts = {example["id"]: example["context"] for example in EXAMPLES}
  predictions = decode_squad_predictions(
    start_logits, end_logits, features, contexts, max_answer_length=10
  )
  assert predictions == {"q1": "France", "q2": "Rollo", "q3": "King Charles III"}
  gold = {example["id"]: example["answers"]["text"] for example in EXAMPLES}
  assert squad_scores(predictions, gold) == {"exact_match": 100.0, "f1": 100.0}


def test_assemble_logits_detects_missing_features():
  with pytest.raises(ValueError, match="1 of 2 features have no logits"):
    assemble_logits([(np.array([0, -1]), np.zeros((2, 4)), np.zeros((2, 4)))], 2, 8)
