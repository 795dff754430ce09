"""Calibration texts: what the engine choice measures speed and vector agreement on. Real English of
the lengths the server sees (a search query, a sentence, a paragraph, a full 256-token chunk),
plus a line of code and a list of numbers, where reduced precision drifts first. Fixed, so a
recorded measurement stays comparable."""

from __future__ import annotations

_SHORT = (
    "How do I reset my password?",
    "best hiking trails near the coast",
    "Quarterly revenue grew by twelve percent.",
    "What is the boiling point of water at altitude?",
    "Symptoms of vitamin D deficiency",
    "The meeting was moved to Thursday afternoon.",
    "python asyncio gather vs wait",
    "Who wrote the first modern novel?",
)

_MEDIUM = (
    "The library extended its opening hours during exam season, keeping the reading rooms open until "
    "midnight and adding extra staff at the help desk so that students could find sources quickly.",
    "To replace the filter, switch the unit off at the wall, open the front panel, slide the old filter "
    "out along its rails and insert the new one with the arrow pointing towards the fan.",
    "Photosynthesis converts light energy into chemical energy: chlorophyll absorbs red and blue light, "
    "water is split, oxygen is released, and carbon dioxide is fixed into sugars.",
    "The committee rejected the proposal because the cost estimate left out maintenance, insurance and "
    "the staff needed to run the new building once it opened.",
    "def merge(a, b):\n    out = []\n    while a and b:\n        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n"
    "    return out + a + b",
    "Readings: 12.5, 13.1, 12.9, 14.0, 13.7, 12.2, 15.3, 14.8, 13.3, 12.6 degrees over ten days.",
    "Il pleuvait depuis le matin, et les rues du vieux port brillaient sous les lampadaires.",
    "Customers who ordered before noon received their parcels the next day, while later orders "
    "shipped on the following business day.",
)

_LONG = (
    "The river has shaped the town for as long as anyone can remember. In spring it rises with the "
    "snowmelt from the hills, filling the meadows along its banks and leaving behind a layer of fine "
    "silt that makes the soil there the richest in the valley. Farmers learned long ago to plant late "
    "in the low fields and early on the terraces above them. In summer the water runs low and clear, "
    "and children swim in the deep pool below the old mill, whose wheel has not turned in fifty years. "
    "In autumn the salmon return, and for a few weeks the bridge is crowded with people watching them "
    "leap the weir. The town council has argued for a decade about whether to remove the weir "
    "entirely, which would help the fish but flood the cellars of the houses nearest the water.",
    "Before you deploy the service, make sure the configuration file names the right database and "
    "that the credentials it uses can create tables. The first start runs the migrations, which can "
    "take several minutes on a large installation; do not stop the process while they run. Once the "
    "health endpoint reports ready, put the instance behind the load balancer and watch the error "
    "rate for a quarter of an hour. If the rate climbs, take the instance out again and read its "
    "logs: most failures at this stage come from a missing environment variable or from a firewall "
    "rule that blocks the connection to the cache. Rolling back means starting the previous version "
    "against the same database, which every release is tested to support.",
    "Early astronomers noticed that a handful of lights wandered against the fixed pattern of the "
    "stars, and they called them planets, from the Greek word for wanderer. Explaining their motion "
    "took nearly two thousand years. The models that put the Earth at the centre needed circles upon "
    "circles to match the observations, and each improvement in measurement demanded more of them. "
    "Placing the Sun at the centre simplified the picture, but the orbits still did not fit until "
    "they were allowed to be ellipses. Newton later showed that a single law of gravitation "
    "accounted for the ellipses, the tides and the fall of an apple alike, and the wanderers became "
    "the first proof that the heavens obey the same rules as the ground beneath our feet.",
    "Our return policy is simple. You may return any item within thirty days of delivery for a full "
    "refund, provided it is unused and in its original packaging. Start a return from the orders page "
    "of your account, print the label we send you, and drop the parcel at any post office. Refunds "
    "are issued to the original payment method within five business days of the item reaching our "
    "warehouse. Items marked as final sale, gift cards and personalised products cannot be returned. "
    "If an item arrives damaged or is not what you ordered, contact support with a photograph and "
    "we will send a replacement at no cost, without asking you to return the original first.",
)

CALIBRATION_TEXTS: tuple[str, ...] = _SHORT + _MEDIUM + _LONG
