/* A shared module without the entry symbol, for test-plugin. */
int gw_not_a_plugin(void);

int gw_not_a_plugin(void)
{
        return 42;
}
