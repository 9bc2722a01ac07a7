"""The procedural shapes world (coloured shapes at named places with Chinese captions) and its
prompt-adherence scorer. Pure Python + numpy + OpenCV + Pillow; no MindSpore here."""
from .scorer import DetectedObject, analyse, score, score_many
from .world import (
    BACKGROUNDS,
    COLOURS,
    HELDOUT_COMBOS,
    PLACES,
    SHAPES,
    ParsedPrompt,
    PromptNotInWorldError,
    Scene,
    ShapeObject,
    ShapesWorld,
    build_vocab,
    eval_prompts,
    export_csv,
    is_world_prompt,
    make_caption,
    parse_prompt,
    render_scene,
)

__all__ = [
    "BACKGROUNDS", "COLOURS", "HELDOUT_COMBOS", "PLACES", "SHAPES", "DetectedObject", "ParsedPrompt",
    "PromptNotInWorldError", "Scene", "ShapeObject", "ShapesWorld", "analyse", "build_vocab", "eval_prompts",
    "export_csv", "is_world_prompt", "make_caption", "parse_prompt", "render_scene", "score", "score_many",
]
