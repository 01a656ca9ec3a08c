SRCS := 01-bounds-check/sample.c
