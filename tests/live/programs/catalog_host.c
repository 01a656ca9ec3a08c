/*
 * A host process for a real distribution library's SGML catalog loader: each stdin line is
 * "CATALOG-PATH SYSTEM-ID"; the host loads the catalog with libxml2's xmlLoadACatalog (which follows
 * the catalog's CATALOG entries into further catalogs), resolves the system identifier in it and
 * answers "N RESULT": N counts the requests served since start (state the live patch must keep),
 * RESULT is the resolved URI, "none", or "error" when the catalog did not load.
 */
#include <libxml/catalog.h>
#include <libxml/xmlmemory.h>
#include <stdio.h>
#include <string.h>

int main(void)
{
    char line[4096];
    unsigned long served = 0;

    while (fgets(line, sizeof line, stdin) != NULL) {
        char *system_id;
        xmlCatalogPtr catalog;

        line[strcspn(line, "\n")] = '\0';
        system_id = strchr(line, ' ');
        if (system_id == NULL) {
            printf("%lu error\n", ++served);
            fflush(stdout);
            continue;
        }
        *system_id++ = '\0';
        catalog = xmlLoadACatalog(line);
        if (catalog == NULL) {
            printf("%lu error\n", ++served);
        } else {
            xmlChar *uri = xmlACatalogResolveSystem(catalog, (const xmlChar *)system_id);

            printf("%lu %s\n", ++served, uri != NULL ? (const char *)uri : "none");
            xmlFree(uri);
            xmlFreeCatalog(catalog);
        }
        fflush(stdout);
    }
    return 0;
}
