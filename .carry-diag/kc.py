import os, sys, json, collections, re
root = sys.argv[1]
for dp, dn, fn in os.walk(root):
    for f in fn:
        p = os.path.join(dp, f); sz = os.path.getsize(p)
        if sz < 100000: print(sz, p); continue
        data = open(p, 'rb').read()
        # entries are JSON objects separated by a separator; count by key name
        keys = collections.Counter(); n = 0
        for m in re.finditer(rb'\{"key":', data):
            n += 1
            seg = data[m.start(): m.start() + 400].decode('utf8', 'replace')
            k = re.sub(r'[0-9]+', '#', seg[7:160])
            keys[k] += 1
        print(sz, p, 'entries', n)
        for k, c in keys.most_common(25): print('   ', c, k)
