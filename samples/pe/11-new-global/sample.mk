SRCS := 11-new-global/sample.c
