"""Fixed prompt text of the released PixelDiT / PiD models (facts of the official configs, nv-tlabs/PiD)."""

from __future__ import annotations

#: The instruction ("CHI") prefix PixelDiT-T2I and every PiD release put before each caption, lines joined
#: with newlines; it ends in "User Prompt: " so the caption follows directly.
CHI_PROMPT = "\n".join(
    [
        'Given a user prompt, generate an "Enhanced prompt" that provides detailed visual descriptions '
        "suitable for image generation. Evaluate the level of detail in the user prompt:",
        "- If the prompt is simple, focus on adding specifics about colors, shapes, sizes, textures, and "
        "spatial relationships to create vivid and concrete scenes.",
        "- If the prompt is already detailed, refine and enhance the existing details slightly without "
        "overcomplicating.",
        "Here are examples of how to transform or refine prompts:",
        "- User Prompt: A cat sleeping -> Enhanced: A small, fluffy white cat curled up in a round shape, "
        "sleeping peacefully on a warm sunny windowsill, surrounded by pots of blooming red flowers.",
        "- User Prompt: A busy city street -> Enhanced: A bustling city street scene at dusk, featuring "
        "glowing street lamps, a diverse crowd of people in colorful clothing, and a double-decker bus "
        "passing by towering glass skyscrapers.",
        "Please generate only the enhanced description for the prompt below and avoid including any "
        "additional commentary or evaluations:",
        "User Prompt: ",
    ]
)

#: The negative prompt the official teacher sampler (and the DMD2 teacher target) uses as the text-CFG
#: unconditional caption.
NEGATIVE_PROMPT = (
    "low quality, worst quality, over-saturated, three legs, six fingers, cartoon, anime, cgi, "
    "low res, blurry, deformed, distortion, duplicated limbs, plastic skin, jpeg artifacts, watermark"
)

PREFIXES = {"chi": CHI_PROMPT}


def resolve_prefix(prefix: str | None) -> str:
    """A prefix name (``"chi"``) or literal text → the text ("" for None)."""
    if not prefix:
        return ""
    return PREFIXES.get(prefix, prefix)
