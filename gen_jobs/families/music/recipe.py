"""The music family's recipe: tokenizer, model size, corpus, training, sampling and audio settings."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from gen_jobs.core.recipes import RecipeBase, StrictModel
from gen_jobs.families.lm.config import DecoderConfig, TrainConfig  # what text and music share


class TokenizerConfig(StrictModel):
    """MidiTok REMI: Bar, Position, Pitch, (Velocity), Duration, (Tempo) tokens."""

    scheme: Literal["REMI"] = "REMI"
    pitch_low: int = Field(21, ge=0, le=127)
    pitch_high: int = Field(108, ge=0, le=127)
    positions_per_beat: int = Field(8, gt=0, le=64, description="time resolution of onsets and durations (first 4 beats)")
    use_velocities: bool = Field(False, description="the chorales have no dynamics: off keeps sequences short")
    num_velocities: int = Field(8, gt=0, le=127)
    use_tempos: bool = False

    @model_validator(mode="after")
    def _range(self) -> "TokenizerConfig":
        if self.pitch_low >= self.pitch_high:
            raise ValueError(f"tokenizer.pitch_low ({self.pitch_low}) must be below pitch_high ({self.pitch_high})")
        return self


class ModelConfig(DecoderConfig):
    """A GPT-2 decoder; its vocabulary is the tokenizer's."""

    n_layer: int = Field(3, gt=0, le=96)
    n_positions: int = Field(256, ge=16, le=32768, description="context length in tokens")


class MusicDataConfig(StrictModel):
    source: str = Field("music21:bach-chorales",
                        description="music21:bach-chorales (bundled), or a folder / s3:// prefix of .mid/.midi/.xml/.mxl/.musicxml")
    held_out: float = Field(0.05, gt=0, lt=0.5, description="share of pieces held out for the loss")
    transpose: list[int] = Field(default_factory=list,
                                 description="augmentation: training pieces also transposed by these semitones, e.g. [-2, -1, 1, 2]")
    max_files: int | None = Field(None, gt=0, description="use only the first N pieces (sorted order)")

    @model_validator(mode="after")
    def _shifts(self) -> "MusicDataConfig":
        if any(abs(s) > 12 or s == 0 for s in self.transpose):
            raise ValueError(f"data.transpose {self.transpose}: shifts must be non-zero semitones within -12..12")
        return self


class SamplingConfig(StrictModel):
    max_new_tokens: int = Field(240, gt=0, description="tokens per piece (REMI: ~2.5 per note)")
    temperature: float = Field(0.9, ge=0, description="0 = greedy")
    top_k: int = Field(0, ge=0, description="keep the k most likely tokens; 0 = off")
    top_p: float = Field(0.95, gt=0, le=1, description="nucleus sampling mass")
    primer_bars: int | None = Field(4, gt=0, description="a primer is cut to its first N bars; null: kept whole")
    long_prompts: Literal["truncate_left", "error"] = Field(
        "truncate_left", description="primers longer than the context: keep their end or refuse")


class AudioConfig(StrictModel):
    """The optional `audio` column (raygen generate --audio)."""

    enabled: bool = False
    sample_rate: int = Field(22_050, ge=8_000, le=96_000)
    soundfont: str | None = Field(None, description="a General MIDI .sf2 for FluidSynth; unset: the NumPy synthesiser")


class QualityConfig(StrictModel):
    copy_tokens: int = Field(64, ge=8, description="a piece whose continuation has a run of this many tokens found "
                                                  "verbatim in the training corpus is flagged as a copy (column `copy`); "
                                                  "held-out chorales share runs of ~35 tokens with the rest (cadences)")


class Recipe(RecipeBase):
    family: Literal["music"] = "music"
    tokenizer: TokenizerConfig = TokenizerConfig()
    model: ModelConfig = ModelConfig()
    data: MusicDataConfig = MusicDataConfig()
    train: TrainConfig
    sampling: SamplingConfig = SamplingConfig()
    audio: AudioConfig = AudioConfig()
    quality: QualityConfig = QualityConfig()

    def for_dataset(self) -> "Recipe":
        """With audio on, the SoundFont is checked, or the installed one named (None: the NumPy synthesiser)."""
        if not self.audio.enabled:
            return self
        from gen_jobs.families.music.audio import find_soundfont

        audio = self.audio.model_copy(update={"soundfont": find_soundfont(self.audio.soundfont)})
        return self.model_copy(update={"audio": audio})

    @model_validator(mode="after")
    def _room_to_generate(self) -> "Recipe":
        if self.sampling.max_new_tokens >= self.model.n_positions:
            raise ValueError(f"sampling.max_new_tokens ({self.sampling.max_new_tokens}) must be below the context "
                             f"length model.n_positions ({self.model.n_positions})")
        return self
