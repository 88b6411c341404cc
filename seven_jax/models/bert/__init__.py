"""BERT in Flax NNX: modeling, Hugging Face loading, SEVEN prunable preset."""

from seven_jax.models.bert.modeling import (
  BertConfig,
  BertEmbeddings,
  BertEncoder,
  BertForQuestionAnswering,
  BertForSequenceClassification,
  BertModel,
  sequence_classification_loss,
  span_loss,
)
from seven_jax.models.bert.params import (
  default_model_path,
  from_pretrained,
  is_prunable_path,
  load_config,
  load_tokenizer,
  prunable,
  to_hf_state_dict,
)
