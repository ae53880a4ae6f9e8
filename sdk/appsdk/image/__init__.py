"""image: disk image formats, read and written: bmap, GPT, PE (UKI sections), and `appsdk
inspect`. May import core, spec and contract."""
