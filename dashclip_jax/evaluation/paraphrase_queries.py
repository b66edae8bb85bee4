"""Hand-written paraphrased shopping queries, each with the constraints it
means (`PARAPHRASES`).

The fashion catalog's own queries use its words ("men navy blue shirts");
real users paraphrase ("navy shirt for him", "ladies purse"). Each
`Paraphrase` stores its text and the structured constraints it stands for
(product type, optional gender, colour, usage, brand), so it is labelled with
the same rule as the catalog's queries (`paraphrase_labels.py`); no paraphrase
names a sub-brand ("ADIDAS Originals"), which that rule would not tell apart.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Paraphrase:
  """A free-text query and the constraints it stands for.

  Attributes:
    text: what a user would type.
    article_type: the product type (a styles.csv `articleType`).
    gender, colour, usage: optional `gender` / `baseColour` / `usage` values.
    brand: optional brand words, matched against the title's first words.
  """
  text: str
  article_type: str
  gender: str | None = None
  colour: str | None = None
  usage: str | None = None
  brand: str | None = None


_P = Paraphrase  # Short, for the table below.
PARAPHRASES: tuple[Paraphrase, ...] = (
    # Tops.
    _P("navy shirt for him", "Shirts", gender="Men", colour="Navy Blue"),
    _P("dress shirt for office", "Shirts", usage="Formal"),
    _P("white formal shirt for men", "Shirts", gender="Men", colour="White",
       usage="Formal"),
    _P("check shirt for ladies", "Shirts", gender="Women"),
    _P("tee for guys", "Tshirts", gender="Men"),
    _P("plain white tee", "Tshirts", colour="White"),
    _P("gym t shirt", "Tshirts", usage="Sports"),
    _P("graphic tee for boys", "Tshirts", gender="Boys"),
    _P("tshirt men blue", "Tshirts", gender="Men", colour="Blue"),
    _P("black top for her", "Tops", gender="Women", colour="Black"),
    _P("ladies blouse", "Tops", gender="Women"),
    _P("hoodie", "Sweatshirts"),
    _P("grey hoodie for men", "Sweatshirts", gender="Men", colour="Grey"),
    _P("woollen pullover", "Sweaters"),
    _P("jumper for women", "Sweaters", gender="Women"),
    _P("winter jacket for men", "Jackets", gender="Men"),
    _P("black jacket", "Jackets", colour="Black"),
    _P("kurta for men", "Kurtas", gender="Men"),
    _P("ethnic kurta for women", "Kurtas", gender="Women", usage="Ethnic"),
    _P("ladies kurti", "Kurtis", gender="Women"),
    _P("one piece dress", "Dresses"),
    _P("frock for women", "Dresses", gender="Women"),
    _P("sari", "Sarees"),
    # Bottoms.
    _P("pants for men", "Trousers", gender="Men"),
    _P("black pants", "Trousers", colour="Black"),
    _P("formal trousers", "Trousers", usage="Formal"),
    _P("denims for men", "Jeans", gender="Men"),
    _P("blue denim for her", "Jeans", gender="Women", colour="Blue"),
    _P("jeans men black", "Jeans", gender="Men", colour="Black"),
    _P("half pants for men", "Shorts", gender="Men"),
    _P("joggers for men", "Track Pants", gender="Men"),
    _P("sweatpants", "Track Pants"),
    _P("yoga leggings for women", "Leggings", gender="Women"),
    _P("ladies skirt", "Skirts", gender="Women"),
    # Innerwear.
    _P("underwear for men", "Briefs", gender="Men"),
    _P("vest for men", "Innerwear Vests", gender="Men"),
    _P("bra for women", "Bra", gender="Women"),
    # Footwear.
    _P("running shoes", "Sports Shoes"),
    _P("gym shoes for women", "Sports Shoes", gender="Women"),
    _P("sneakers", "Casual Shoes"),
    _P("white sneakers for men", "Casual Shoes", gender="Men", colour="White"),
    _P("office shoes for men", "Formal Shoes", gender="Men"),
    _P("black leather shoes for office", "Formal Shoes", colour="Black"),
    _P("stilettos", "Heels"),
    _P("black high heels", "Heels", colour="Black"),
    _P("ballerina flats", "Flats"),
    _P("ladies sandals", "Sandals", gender="Women"),
    _P("slippers for men", "Flip Flops", gender="Men"),
    _P("flip flops for the beach", "Flip Flops"),
    _P("socks for men", "Socks", gender="Men"),
    # Accessories.
    _P("ladies purse", "Handbags", gender="Women"),
    _P("black handbag women", "Handbags", gender="Women", colour="Black"),
    _P("evening clutch", "Clutches"),
    _P("school bag", "Backpacks"),
    _P("gym bag", "Duffel Bag"),
    _P("wrist watch for women", "Watches", gender="Women"),
    _P("gold watch for him", "Watches", gender="Men", colour="Gold"),
    _P("silver watch for men", "Watches", gender="Men", colour="Silver"),
    _P("shades", "Sunglasses"),
    _P("black shades for men", "Sunglasses", gender="Men", colour="Black"),
    _P("brown leather wallet for him", "Wallets", gender="Men",
       colour="Brown"),
    _P("belt for men", "Belts", gender="Men"),
    _P("baseball cap", "Caps"),
    _P("neck tie", "Ties"),
    _P("cuff links", "Cufflinks"),
    _P("scarf for women", "Scarves", gender="Women"),
    _P("ladies earrings", "Earrings", gender="Women"),
    # Personal care.
    _P("perfume for men", "Perfume and Body Mist", gender="Men"),
    _P("body spray for men", "Deodorant", gender="Men"),
    _P("nail paint", "Nail Polish"),
    _P("lip colour", "Lipstick"),
    # With a brand.
    _P("nike running shoes", "Sports Shoes", brand="Nike"),
    _P("puma sneakers", "Casual Shoes", brand="Puma"),
    _P("wrangler denims", "Jeans", brand="Wrangler"),
    _P("baggit purse", "Handbags", brand="Baggit"),
    _P("catwalk black heels", "Heels", colour="Black", brand="Catwalk"),
    _P("fastrack watch for men", "Watches", gender="Men", brand="Fastrack"),
    _P("lino perros wallet", "Wallets", brand="Lino Perros"),
    _P("reebok running shoes for men", "Sports Shoes", gender="Men",
       brand="Reebok"),
)
del _P
