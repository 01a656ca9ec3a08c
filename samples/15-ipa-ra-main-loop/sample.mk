KIND := program
PLAIN := yes
