LANG := c++
