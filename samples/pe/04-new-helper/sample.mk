SRCS := 04-new-helper/sample.c
