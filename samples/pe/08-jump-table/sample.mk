SRCS := 08-jump-table/sample.c
