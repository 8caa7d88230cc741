"""How flights reach a server: the typed interface (`base`) and one module per transport.

`raw` (the default: a lean HTTP/1.1 client on asyncio protocols, strict and cheap per chunk) and
`aiohttp` (`--transport aiohttp`: proxies, the slower fallback). Both hand every flight back once,
with a true status (docs/reliability.md).
"""
