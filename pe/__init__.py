"""PE32+ (Windows x64) facts shared by the builder and the loader: header layouts, the image identity
(CodeView RSDS or TimeDateStamp + SizeOfImage + header digest), `.pdata` and base relocations.

Pure Python over bytes, read through one `RvaReader` from a file or from a process's memory, so that
the loader can recognise an image Wine mapped without the diff engine's parser (LIEF).
"""
