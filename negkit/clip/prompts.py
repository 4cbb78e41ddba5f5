"""Class names and prompt templates for CLIP zero-shot heads (data, not code).

Templates are those of the original CLIP paper (Radford et al., 2021; the
per-dataset prompt lists of openai/CLIP ``data/prompts.md``), which is what the
task_vectors / NegMerge code uses for its zero-shot heads: Cars, DTD, EuroSAT,
GTSRB, MNIST, RESISC45, SUN397 and SVHN below; ImageNet uses open_clip's
``OPENAI_IMAGENET_TEMPLATES`` (the same 80 CLIP-paper templates), read from
``open_clip.zero_shot_metadata`` rather than copied here. Templates are
``str.format`` strings with the placeholder ``{}`` (open_clip's convention).

Class names: GTSRB and EuroSAT use the CLIP paper's descriptive names (also
shipped as ``en_classnames.json`` by clip_benchmark 1.6.2); RESISC45 uses its 45
scene names with ``_`` replaced by spaces; MNIST and SVHN use the digits
``"0"``..``"9"`` (as task_vectors does). Cars, DTD and SUN397 take their class
names from the dataset itself (torchvision's ``classes`` or the folder names),
so they have no entry in :data:`CLASSNAMES`. ImageNet class names come from
``open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES``.

clip_benchmark itself is not a dependency: its wheel pulls in transformers,
webdataset and pycocoevalcap, and it lacks class names for Cars, DTD, RESISC45
and SUN397 and uses different SVHN/RESISC45 templates than the CLIP paper.
"""
from __future__ import annotations

__all__ = ["TEMPLATES", "CLASSNAMES", "TEMPLATE_SOURCE"]

TEMPLATE_SOURCE = "CLIP paper (Radford et al. 2021, openai/CLIP data/prompts.md), as used by task_vectors/NegMerge"

#: Per-dataset prompt templates (``{}`` is replaced by the class name).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "cars": (
        "a photo of a {}.",
        "a photo of the {}.",
        "a photo of my {}.",
        "i love my {}!",
        "a photo of my dirty {}.",
        "a photo of my clean {}.",
        "a photo of my new {}.",
        "a photo of my old {}.",
    ),
    "dtd": (
        "a photo of a {} texture.",
        "a photo of a {} pattern.",
        "a photo of a {} thing.",
        "a photo of a {} object.",
        "a photo of the {} texture.",
        "a photo of the {} pattern.",
        "a photo of the {} thing.",
        "a photo of the {} object.",
    ),
    "eurosat": (
        "a centered satellite photo of {}.",
        "a centered satellite photo of a {}.",
        "a centered satellite photo of the {}.",
    ),
    "gtsrb": (
        "a zoomed in photo of a \"{}\" traffic sign.",
        "a centered photo of a \"{}\" traffic sign.",
        "a close up photo of a \"{}\" traffic sign.",
    ),
    "mnist": (
        "a photo of the number: \"{}\".",
    ),
    "resisc45": (
        "satellite imagery of {}.",
        "aerial imagery of {}.",
        "satellite photo of {}.",
        "aerial photo of {}.",
        "satellite view of {}.",
        "aerial view of {}.",
        "satellite imagery of a {}.",
        "aerial imagery of a {}.",
        "satellite photo of a {}.",
        "aerial photo of a {}.",
        "satellite view of a {}.",
        "aerial view of a {}.",
        "satellite imagery of the {}.",
        "aerial imagery of the {}.",
        "satellite photo of the {}.",
        "aerial photo of the {}.",
        "satellite view of the {}.",
        "aerial view of the {}.",
    ),
    "sun397": (
        "a photo of a {}.",
        "a photo of the {}.",
    ),
    "svhn": (
        "a photo of the number: \"{}\".",
    ),
}

# MNIST and SVHN label digits 0-9 by their value.
_DIGITS = tuple(str(d) for d in range(10))

#: Class names for datasets whose names are not taken from the data itself, in label order.
CLASSNAMES: dict[str, tuple[str, ...]] = {
    "eurosat": (
        "annual crop land",
        "forest",
        "brushland or shrubland",
        "highway or road",
        "industrial buildings or commercial buildings",
        "pasture land",
        "permanent crop land",
        "residential buildings or homes or apartments",
        "river",
        "lake or sea",
    ),
    "gtsrb": (
        "red and white circle 20 kph speed limit",
        "red and white circle 30 kph speed limit",
        "red and white circle 50 kph speed limit",
        "red and white circle 60 kph speed limit",
        "red and white circle 70 kph speed limit",
        "red and white circle 80 kph speed limit",
        "end / de-restriction of 80 kph speed limit",
        "red and white circle 100 kph speed limit",
        "red and white circle 120 kph speed limit",
        "red and white circle red car and black car no passing",
        "red and white circle red truck and black car no passing",
        "red and white triangle road intersection warning",
        "white and yellow diamond priority road",
        "red and white upside down triangle yield right-of-way",
        "stop",
        "empty red and white circle",
        "red and white circle no truck entry",
        "red circle with white horizonal stripe no entry",
        "red and white triangle with exclamation mark warning",
        "red and white triangle with black left curve approaching warning",
        "red and white triangle with black right curve approaching warning",
        "red and white triangle with black double curve approaching warning",
        "red and white triangle rough / bumpy road warning",
        "red and white triangle car skidding / slipping warning",
        "red and white triangle with merging / narrow lanes warning",
        "red and white triangle with person digging / construction / road work warning",
        "red and white triangle with traffic light approaching warning",
        "red and white triangle with person walking warning",
        "red and white triangle with child and person walking warning",
        "red and white triangle with bicyle warning",
        "red and white triangle with snowflake / ice warning",
        "red and white triangle with deer warning",
        "white circle with gray strike bar no speed limit",
        "blue circle with white right turn arrow mandatory",
        "blue circle with white left turn arrow mandatory",
        "blue circle with white forward arrow mandatory",
        "blue circle with white forward or right turn arrow mandatory",
        "blue circle with white forward or left turn arrow mandatory",
        "blue circle with white keep right arrow mandatory",
        "blue circle with white keep left arrow mandatory",
        "blue circle with white arrows indicating a traffic circle",
        "white circle with gray strike bar indicating no passing for cars has ended",
        "white circle with gray strike bar indicating no passing for trucks has ended",
    ),
    "mnist": _DIGITS,
    "resisc45": (
        "airplane",
        "airport",
        "baseball diamond",
        "basketball court",
        "beach",
        "bridge",
        "chaparral",
        "church",
        "circular farmland",
        "cloud",
        "commercial area",
        "dense residential",
        "desert",
        "forest",
        "freeway",
        "golf course",
        "ground track field",
        "harbor",
        "industrial area",
        "intersection",
        "island",
        "lake",
        "meadow",
        "medium residential",
        "mobile home park",
        "mountain",
        "overpass",
        "palace",
        "parking lot",
        "railway",
        "railway station",
        "rectangular farmland",
        "river",
        "roundabout",
        "runway",
        "sea ice",
        "ship",
        "snowberg",
        "sparse residential",
        "stadium",
        "storage tank",
        "tennis court",
        "terrace",
        "thermal power station",
        "wetland",
    ),
    "svhn": _DIGITS,
}
