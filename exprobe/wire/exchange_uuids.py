"""Exchange's RPC interfaces, by component, and a classifier for endpoint-mapper entries.

Sources and confidence levels: shared research note `research/msrpc.md` §2.
Confidence "H": a Microsoft specification or two independent code sources; "M":
consistent tool lists without a specification; "?": one source or a conflict.

Components: `ds` (directory: Exchange 5.5 DS, later DSProxy / Address Book service),
`is` (information store: store.exe, later RPC Client Access), `mta` (emsmta.exe),
`sa` (System Attendant, mad.exe).

Caveats the classifier cannot see by itself:
* NSPI (f5cc5a18) and XDS (f5cc5a7c) are also registered by Active Directory domain
  controllers (lsass / ntdsai.dll): on a DC they are not proof of Exchange.
* f5cc59b4 v1.x is Windows' File Replication Service (MS-FRS1), not Exchange; only the
  v21 registration (OpenChange: "Exchange 5.5 DRS") is classified, with confidence "?".
* Ports belong to processes, not interfaces: one process registers all its interfaces on
  the same endpoint, so results are grouped by (component, host, port).
"""

from __future__ import annotations

from dataclasses import dataclass

COMPONENTS = ("ds", "is", "mta", "sa")
COMPONENT_NAMES = {
    "ds": "DS",
    "is": "IS",
    "mta": "MTA",
    "sa": "SA",
    "other": "other",
}
COMPONENT_TITLES = {
    "ds": "Directory (DS / DSProxy / Address Book)",
    "is": "Information Store",
    "mta": "Message Transfer Agent",
    "sa": "System Attendant",
    "other": "other interfaces",
}


@dataclass(frozen=True, slots=True)
class Interface:
    """One known RPC interface of Exchange."""

    uuid: str
    version: tuple[int, int]
    name: str
    component: str
    confidence: str  # "H", "M" or "?"
    majors: tuple[int, ...] | None = None  # only these major versions are Exchange's
    note: str = ""

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}"


EXCHANGE_INTERFACES: tuple[Interface, ...] = (
    # Information Store (store.exe; Exchange 2010 RPC Client Access).  The first entry of
    # each component is the one a derived bind check uses.
    Interface(
        "a4f1db00-ca47-1067-b31f-00dd010662da",
        (0, 81),
        "EMSMDB (MAPI store, MS-OXCRPC)",
        "is",
        "H",
        note="version 0.81 (also listed 0.0): major 0 is normal",
    ),
    Interface(
        "5261574a-4572-206e-b268-6b199213b4e4",
        (0, 1),
        "AsyncEMSMDB (MS-OXCRPC)",
        "is",
        "H",
    ),
    Interface(
        "a4f1db00-ca47-1067-b31e-00dd010662da",
        (1, 0),
        "store admin (exchange_store_admin1)",
        "is",
        "M",
    ),
    Interface("89742ace-a9ed-11cf-9c0c-08002be7ae86", (2, 0), "store admin 2", "is", "M"),
    Interface("99e64010-b032-11d0-97a4-00c04fd6551d", (3, 0), "store admin 3", "is", "M"),
    Interface(
        "0e4a0156-dd5d-11d2-8c2f-00c04fb6bcde",
        (1, 0),
        "information store (exchange_store_information)",
        "is",
        "M",
    ),
    Interface(
        "1453c42c-0fa6-11d2-a910-00c04f990f3b", (1, 0), "Microsoft Information Store", "is", "M"
    ),
    Interface(
        "10f24e8e-0fa6-11d2-a910-00c04f990f3b", (1, 0), "Microsoft Information Store", "is", "M"
    ),
    # Directory: Exchange 5.5 DS (dsamain.exe); 2000-2007 DSProxy (mad.exe); 2010 Address Book.
    Interface(
        "f5cc5a18-4264-101a-8c59-08002b2f8426",
        (56, 0),
        "NSPI (address book, MS-NSPI)",
        "ds",
        "H",
        note="also registered by Active Directory global catalogs: not proof of Exchange",
    ),
    Interface(
        "1544f5e0-613c-11d1-93df-00c04fd7bd09",
        (1, 0),
        "RFR referral (MS-OXABREF)",
        "ds",
        "H",
    ),
    Interface(
        "f5cc5a7c-4264-101a-8c59-08002b2f8426",
        (21, 0),
        "XDS (Exchange 5.5 directory)",
        "ds",
        "M",
        note="Active Directory domain controllers register it too",
    ),
    Interface(
        "f5cc59b4-4264-101a-8c59-08002b2f8426",
        (21, 0),
        "Exchange 5.5 DRS",
        "ds",
        "?",
        majors=(21,),
        note="v1.x of this UUID is Windows FRS (MS-FRS1), not Exchange",
    ),
    # MTA (emsmta.exe, Exchange 4.0-2003).
    Interface("9e8ee830-4459-11ce-979b-00aa005ffebe", (2, 0), "MTA 'Mta' interface", "mta", "M"),
    Interface(
        "38a94e72-a9bc-11d2-8faf-00c04fa378ff", (1, 0), "MTA QAdmin (queue admin)", "mta", "M"
    ),
    # System Attendant (mad.exe, Exchange 5.5-2007).
    Interface(
        "469d6ec0-0d87-11ce-b13f-00aa003bac6c", (16, 0), "System Attendant public", "sa", "M"
    ),
    Interface(
        "83d72bf0-0d89-11ce-b13f-00aa003bac6c", (6, 0), "System Attendant private", "sa", "M"
    ),
    Interface(
        "f930c514-1215-11d3-99a5-00a0c9b61b04", (1, 0), "System Attendant cluster", "sa", "M"
    ),
)

_BY_UUID: dict[str, list[Interface]] = {}
for _iface in EXCHANGE_INTERFACES:
    _BY_UUID.setdefault(_iface.uuid, []).append(_iface)

# Interfaces whose presence marks an Active Directory domain controller (drsuapi, MS-DRSR).
AD_DC_INTERFACES = frozenset({"e3514235-4b06-11d1-ab04-00c04fc2dcd2"})
AD_SHARED = frozenset(
    {"f5cc5a18-4264-101a-8c59-08002b2f8426", "f5cc5a7c-4264-101a-8c59-08002b2f8426"}
)


def lookup(uuid: str, version: tuple[int, int] | None = None) -> Interface | None:
    """The Exchange interface `uuid` (at `version`, where the major matters), or None."""
    for iface in _BY_UUID.get(uuid.lower(), ()):
        if iface.majors is None or version is None or version[0] in iface.majors:
            return iface
    return None


def classify(uuid: str, version: tuple[int, int]) -> tuple[str, str] | None:
    """(component, name) of an Exchange interface, or None for anything else.

    >>> classify("a4f1db00-ca47-1067-b31f-00dd010662da", (0, 81))
    ('is', 'EMSMDB (MAPI store, MS-OXCRPC)')
    >>> classify("f5cc59b4-4264-101a-8c59-08002b2f8426", (1, 1)) is None  # FRS
    True
    """
    iface = lookup(uuid, version)
    return (iface.component, iface.name) if iface else None


def interfaces_of(
    components: tuple[str, ...] | list[str], *, min_confidence: str = "M"
) -> list[Interface]:
    """The interfaces of `components` to resolve with ept_map ("?" excluded by default)."""
    allowed = (
        ("H",)
        if min_confidence == "H"
        else ("H", "M")
        if min_confidence == "M"
        else ("H", "M", "?")
    )
    return [i for i in EXCHANGE_INTERFACES if i.component in components and i.confidence in allowed]


def primary(component: str) -> Interface | None:
    """The interface a bind check uses for `component` (the first listed)."""
    return next((i for i in EXCHANGE_INTERFACES if i.component == component), None)


def known_name(uuid: str, version: tuple[int, int]) -> str | None:
    """A name for any interface: Exchange's table first, then impacket's lists."""
    iface = lookup(uuid, version)
    if iface is not None:
        return iface.name
    try:
        import struct

        from impacket.dcerpc.v5 import epm
    except ImportError:  # pragma: no cover - impacket is a dependency
        return None
    import uuid as uuidlib

    key = uuidlib.UUID(uuid).bytes_le + struct.pack("<H", version[0])
    name = epm.KNOWN_UUIDS.get(key)
    proto = epm.KNOWN_PROTOCOLS.get(uuid.upper())
    if proto:
        return str(proto)
    return str(name) if name else None
