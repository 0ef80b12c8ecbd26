"""The model that brain-tuning trains: a pretrained speech encoder, the mean over time of its
last hidden state, and one linear layer to the voxels (docs/method.md#brain-tuning); the
paper's freezing, and LoRA adapters for multi-participant tuning."""

import copy

import torch

import speech_models

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


class BrainTuningModel(torch.nn.Module):
    """Speech encoder -> mean over time of the last hidden state -> one linear layer.

    Parameters
    ----------
    backbone : a transformers audio model (wav2vec2-like, or ``WhisperModel``)
    family : "wav2vec2" or "whisper"
    n_outputs : voxels (or target features) predicted
    whisper_frames : for Whisper, the encoder frames that hold real audio (the rest is the
        30 s padding and is left out of the mean)
    """

    def __init__(self, backbone, family, n_outputs, whisper_frames=None):
        super().__init__()
        self.backbone = backbone
        self.family = family
        self.whisper_frames = whisper_frames
        self.head = torch.nn.Linear(speech_models.hidden_size(backbone), n_outputs)

    def freeze(self):
        """Freeze what the paper keeps fixed: the CNN feature encoder (wav2vec2-like); the
        decoder, conv1, conv2 and positional embeddings (Whisper)."""
        if self.family != "whisper":
            # _freeze_parameters (every wav2vec2-like feature encoder has it) also stops the
            # CNN from asking for gradients of its input, so no backward pass runs through it
            self.backbone.feature_extractor._freeze_parameters()
            return
        for module in (self.backbone.decoder, self.backbone.encoder.conv1,
                       self.backbone.encoder.conv2, self.backbone.encoder.embed_positions):
            for parameter in module.parameters():
                parameter.requires_grad_(False)

    def pooled(self, inputs):
        """Mean of the last hidden state over time: (batch, hidden)."""
        if self.family == "whisper":
            hidden = self.backbone.encoder(inputs).last_hidden_state
            return hidden[:, :self.whisper_frames].mean(dim=1)
        return self.backbone(inputs).last_hidden_state.mean(dim=1)

    def forward(self, inputs):
        """inputs: (batch, samples) audio or (batch, mel, frames) -> (batch, n_outputs)."""
        return self.head(self.pooled(inputs))


def build_model(name_or_path, n_outputs, window_samples):
    """Load a checkpoint as a ``BrainTuningModel`` with the paper's freezing, plus its
    ``AudioPreprocessor``."""
    encoder = speech_models.load_encoder(name_or_path)
    preprocessor = encoder.preprocessor
    frames = preprocessor.whisper_frames(window_samples) if encoder.family == "whisper" else None
    model = BrainTuningModel(encoder.backbone, encoder.family, n_outputs, frames)
    model.freeze()
    return model, preprocessor


def add_lora(model, rank, alpha=32, dropout=0.1):
    """Train LoRA adapters instead of the whole encoder (multi-participant brain-tuning).

    Adapters of ``rank`` go on the q/k/v/out attention projections of the encoder layers
    (Whisper: not the decoder); every base weight of the backbone is frozen. The head still
    trains fully.
    """
    from peft import LoraConfig, get_peft_model

    pattern = r".*encoder\.layers\.\d+\.(self_attn|attention)\.(" + "|".join(LORA_TARGETS) + ")"
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern)
    model.backbone = get_peft_model(model.backbone, config)
    return model


def plain_backbone(model):
    """The backbone as a plain transformers model: LoRA adapters, if any, merged into a copy."""
    from peft import PeftModel

    if isinstance(model.backbone, PeftModel):
        return copy.deepcopy(model.backbone).merge_and_unload()
    return model.backbone
