module tentacle

go 1.26
