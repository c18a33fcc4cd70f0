"""A target whose tokenizer decodes fewer ids than the modality's head (FSQ: 1000 codes under 1024 ids) is
sampled from the ids the tokenizer can decode only."""

import numpy as np
import torch

from generation_helpers import small_model
from open4m.generation import TargetSpec, generate


class SmallTokenizer:
    """An image tokenizer stub that decodes ids below ``vocab_size`` (as ImageTokenizer.check_tokens demands)."""

    def __init__(self, vocab_size: int) -> None:
        self.vocab_size = vocab_size

    def decode(self, tokens):
        tokens = np.asarray(tokens)
        if tokens.max() >= self.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got max {tokens.max()}")
        return tokens.astype(np.float32)


def _sample(tokenizers):
    model = small_model()
    depth = torch.randint(0, 1000, (2, 14, 14), generator=torch.Generator().manual_seed(0))
    spec = TargetSpec("tok_rgb@224", steps=3, temperature=3.0)
    return generate(model, {"tok_depth@224": depth}, [spec], tokenizers=tokenizers, seed=[0, 1])


def test_sampling_stays_inside_the_tokenizers_vocabulary():
    free = _sample({})
    assert int(free.tokens["tok_rgb@224"].max()) >= 16  # unrestricted, a hot random model samples wide ids
    result = _sample({"tok_rgb@224": SmallTokenizer(16)})
    tokens = result.tokens["tok_rgb@224"]
    assert tokens.shape == (2, 14, 14) and int(tokens.max()) < 16
    assert len(np.unique(tokens.numpy())) > 4  # still sampled, not collapsed onto one id
    assert np.array_equal(result.decoded["tok_rgb@224"], tokens.numpy().astype(np.float32))
