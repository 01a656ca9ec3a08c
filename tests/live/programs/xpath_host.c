/*
 * A host process for a real distribution library: each stdin line is an XPath expression evaluated
 * by libxml2 against a small fixed document; the answer is the result cast to a string, or "error".
 * Run with LD_LIBRARY_PATH pointing at an unpacked Debian libxml2, it is the running service a
 * Debian security update (deb12u4 -> deb12u6, built into a package) is applied to live.
 */
#include <libxml/parser.h>
#include <libxml/xpath.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    const char *text = "<r><a n='1'>x</a><a n='2'>y</a><b/></r>";
    xmlDocPtr doc = xmlReadMemory(text, (int)strlen(text), "d.xml", NULL, 0);
    xmlXPathContextPtr context = xmlXPathNewContext(doc);
    char line[65536];

    while (fgets(line, sizeof line, stdin) != NULL) {
        xmlXPathObjectPtr result;

        line[strcspn(line, "\n")] = '\0';
        result = xmlXPathEvalExpression((const xmlChar *)line, context);
        if (result == NULL) {
            puts("error");
        } else {
            xmlChar *value = xmlXPathCastToString(result);

            puts((const char *)value);
            xmlFree(value);
            xmlXPathFreeObject(result);
        }
        fflush(stdout);
    }
    return 0;
}
