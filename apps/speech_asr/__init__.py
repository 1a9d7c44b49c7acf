"""Streaming tail-language ASR: per-language adapters on a frozen streaming foundation.

An Emformer (CTC) foundation pre-trained on head languages, one ``core.adapters.AdapterBank``
of per-language adapters trained together on mixed-language batches, batched streaming
decoding with several languages in one batch, per-language best-checkpoint assembly, and
WER/CER per language with the head languages' forgetting. See docs/speech_asr.md.
"""
